"""The ``tnn-int8`` plan: which layers become ``Quantized*``, their blob scales, the folded int8
weights and int32 biases (tnn.md §4, algorithms.md §3.4).

Rules, as ``quantization_cmd`` applies them:

* Convolution/InnerProduct marked int8 in the table become Quantized when their input and output
  blobs have a scale; Add (two blobs) and Concat when all their blobs have one; ReLU and max
  Pooling when their producer is Quantized and both blobs have a scale - their input then takes
  the output's scale (propagated upwards). Unlike the tool, ptqconv shares the scales before it
  quantizes the weights, so the file is consistent with the scales it stores.
* Merge type (``table.meta["weights"]``, from ``quantize.weights``): ``per-channel`` writes every
  blob scale with one entry per channel (ptqconv calibrates per tensor, so the entries are equal),
  ``mix`` one entry, ``per-tensor`` one entry and per-tensor weights. Blobs touching an
  InnerProduct always get one entry.
* A table read from a TNN file keeps the exact per-channel values in ``meta["tnn"]``; they are
  used when they still agree with the table, so such a file is written back unchanged.
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from ptqconv.core import log
from ptqconv.formats.tnn import int8 as tq
from ptqconv.formats.tnn.binary import FLOAT, INT8, INT32, raw
from ptqconv.formats.tnn.model import BLOB_SCALE, BLOB_SCALE_SUFFIX, Resource

WEIGHTED_TYPES = ("Convolution", "InnerProduct")


def _blob_scales(ctx, table, used_blobs, fc_blobs):
    """blob -> (float32 scale array, zero point, taken from meta?)."""
    merge = table.meta.get("weights", "per-channel")
    meta = (table.meta.get("tnn") or {}).get("blob_scales", {})
    result = {}
    for tensor, aq in table.activations.items():
        blob = ctx.blob_of.get(tensor)
        if blob is None or blob not in used_blobs or blob in result:
            continue
        stored = meta.get(tensor)
        if stored and np.float32(max(stored)) == np.float32(aq.scale) and \
                (len(stored) == 1 or blob not in fc_blobs):
            result[blob] = (np.asarray(stored, np.float32), aq.zero_point, True)
            continue
        count = 1
        shape = ctx.shape(tensor)
        if merge == "per-channel" and blob not in fc_blobs and shape is not None and \
                len(shape) >= 2 and shape[1] > 0:
            count = shape[1]
        result[blob] = (np.full(count, aq.scale, np.float32), aq.zero_point, False)
    for name, info in ctx.info.items():  # InnerProduct input = the absorbed Flatten's input
        weighted = info["weighted"]
        if weighted and weighted.get("act_tensor") in table.activations:
            layer = next(layer for layer in ctx.layers if layer.name == name)
            if layer.inputs[0] not in result:
                aq = table.activations[weighted["act_tensor"]]
                result[layer.inputs[0]] = (np.array([aq.scale], np.float32), aq.zero_point, False)
    return result


def _decide(ctx, table, scales):
    """Mark layers Quantized (forward), then share ReLU/max-Pooling scales (backward)."""
    producer, floats = {}, []
    for layer in ctx.layers:
        blobs = layer.inputs + layer.outputs
        have = all(b in scales for b in blobs)
        info = ctx.info[layer.name]
        if layer.type in WEIGHTED_TYPES and info["weighted"] is not None:
            if table.is_quantized(info["node"].name):
                layer.quantized = have
                if not have:
                    floats.append(layer.name)
        elif layer.type in ("Add", "Concat") and layer.name not in ctx.resources:
            layer.quantized = have and len(layer.inputs) >= (2 if layer.type == "Add" else 1)
        elif layer.type == "ReLU" or (layer.type == "Pooling" and layer.params[0] == "0"):
            prev = producer.get(layer.inputs[0])
            layer.quantized = have and prev is not None and prev.quantized
        for blob in layer.outputs:
            producer[blob] = layer
    if floats:
        log.step(f"warning: {len(floats)} int8 layer(s) stay float in TNN because the table has "
                 f"no scale for their output: {', '.join(floats[:5])}"
                 + (" ..." if len(floats) > 5 else ""))
    for layer in reversed(ctx.layers):
        if layer.quantized and layer.type in ("ReLU", "Pooling"):
            scales[layer.inputs[0]] = scales[layer.outputs[0]]


def _quantize_weights(ctx, table, layer, s_in, from_meta):
    info = ctx.info[layer.name]
    weighted, node = info["weighted"], info["node"]
    w, group = weighted["weight"].astype(np.float32), weighted["group"]
    wname = node.inputs[1]
    combined = None
    stored = (table.meta.get("tnn") or {}).get("weight_scales", {}).get(wname)
    if stored and from_meta and len(stored) in (1, w.shape[0]):
        candidate = np.asarray(stored, np.float32)
        if tq.on_grid(w, s_in, group, candidate):
            combined = candidate
    if combined is None:
        wq = table.weights.get(wname)
        steps = None
        if wq is not None and float(node.attrs.get("alpha", 1.0)) == 1.0 and \
                np.size(wq.scales) in (1, w.shape[0]):
            steps = np.asarray(wq.scales, np.float64)
        per_tensor = table.meta.get("weights") == "per-tensor" if steps is None \
            else steps.size == 1
        combined = tq.combined_scales(w, s_in, group, per_tensor, steps)
    q = tq.quantize_layer(w, s_in, group, combined)
    zero = raw(np.zeros(combined.size, np.int8), INT8)
    scale = raw(combined, FLOAT)
    res = ctx.resources[layer.name]
    bias = weighted["bias"]
    bq = tq.bias_to_int32(bias, combined) if bias is not None else None
    if weighted["kind"] == "conv":
        fields = {"name": res.fields["name"], "has_bias": int(bq is not None),
                  "filter": raw(q, INT8)}
        if bq is not None:
            fields["bias"] = raw(bq, INT32)
    else:
        fields = {"name": res.fields["name"], "weight": raw(q, INT8),
                  "bias": raw(bq if bq is not None else np.zeros(0, np.int32), INT32)}
    fields.update({"zero_point": zero, "scale": scale})
    res.fields = fields


def apply_int8(ctx, table) -> Dict[str, Resource]:
    """Quantize the emitted layers of ``ctx`` with ``table``; returns blob -> BlobScale record."""
    used = {b for layer in ctx.layers for b in layer.inputs + layer.outputs}
    used.update(ctx.blob(t.name) for t in ctx.graph.inputs)
    fc_blobs = {b for layer in ctx.layers if layer.type == "InnerProduct"
                for b in layer.inputs + layer.outputs}
    scales = _blob_scales(ctx, table, used, fc_blobs)
    _decide(ctx, table, scales)
    for layer in ctx.layers:
        if layer.quantized and layer.type in WEIGHTED_TYPES:
            values, _, from_meta = scales[layer.inputs[0]]
            _quantize_weights(ctx, table, layer, values, from_meta)
    records = {}
    for layer in ctx.layers:
        if not layer.quantized:
            continue
        for blob in layer.inputs + layer.outputs:
            if blob in records:
                continue
            values, zero_point, _ = scales[blob]
            records[blob] = Resource(BLOB_SCALE, blob + BLOB_SCALE_SUFFIX, {
                "zero_point": raw(np.full(values.size, zero_point, np.int8), INT8),
                "scale": raw(values, FLOAT),
                "bias": raw(np.zeros(values.size, np.int32), INT32)})
    return records
