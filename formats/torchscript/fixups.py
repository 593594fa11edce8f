"""Rewrites of pnnx's ncnn output before the ncnn reader sees it.

pnnx turns ``x.mean((2, 3))`` (how onnx2torch and many hand-written models express global average
pooling) into an ncnn ``Reduction`` layer. When the reduction is a mean over both spatial axes of
an image blob and its result is flattened, it is exactly a global average ``Pooling`` layer, the
form every ptqconv writer maps to GlobalAveragePool, so the line is rewritten to that. Other
``Reduction`` layers are left as they are.
"""
from __future__ import annotations

from typing import Dict, List, Optional

# Layers whose output is a 3-D (c, h, w) blob when they are 2-D spatial.
SPATIAL = {"Convolution", "ConvolutionDepthWise", "Pooling", "Deconvolution",
           "DeconvolutionDepthWise"}
# One-input layers that keep their input's shape.
SHAPE_KEEPING = {"ReLU", "Clip", "Sigmoid", "Swish", "HardSwish", "HardSigmoid", "TanH", "Mish",
                 "ELU", "PReLU", "BatchNorm", "Split", "Dropout", "Noop"}
FLATTENING = {"Flatten", "InnerProduct"}
ARRAY_BASE = -23300  # ncnn writes array param k as key -23300-k with "count,v1,v2,..."


class _Layer:
    def __init__(self, tokens: List[str]):
        self.type, self.name = tokens[0], tokens[1]
        n_in, n_out = int(tokens[2]), int(tokens[3])
        self.inputs = tokens[4:4 + n_in]
        self.outputs = tokens[4 + n_in:4 + n_in + n_out]
        self.params: Dict[int, str] = {}
        for item in tokens[4 + n_in + n_out:]:
            key, _, value = item.partition("=")
            self.params[int(key)] = value


def _parse(lines: List[str]) -> Optional[List[Optional[_Layer]]]:
    layers = []
    for line in lines[2:]:
        tokens = line.split()
        if not tokens:
            layers.append(None)
            continue
        try:
            layers.append(_Layer(tokens))
        except (ValueError, IndexError):
            return None  # not ours to diagnose: the ncnn reader reports it with its line number
    return layers


def _is_spatial_blob(blob: str, producer: Dict[str, _Layer], depth: int = 0) -> bool:
    layer = producer.get(blob)
    if layer is None or depth > 64:
        return False
    if layer.type in SPATIAL:
        return True
    return layer.type in SHAPE_KEEPING and len(layer.inputs) == 1 and \
        _is_spatial_blob(layer.inputs[0], producer, depth + 1)


def _is_global_mean(layer: _Layer) -> bool:
    p = layer.params
    axes = p.get(ARRAY_BASE - 3, "")
    try:
        coeff = float(p.get(2, "1"))
    except ValueError:
        return False
    return (layer.type == "Reduction" and len(layer.inputs) == 1 and len(layer.outputs) == 1
            and p.get(0) == "3" and p.get(1) == "0" and p.get(5) == "1"
            and coeff == 1.0 and axes in ("2,1,2", "2,-2,-1"))


def rewrite_global_means(text: str) -> str:
    """Return the ncnn param ``text`` with spatial-mean ``Reduction`` layers whose output is only
    flattened replaced by global average ``Pooling`` (other lines unchanged)."""
    lines = text.splitlines()
    layers = _parse(lines)
    if not layers or not any(la and la.type == "Reduction" for la in layers):
        return text
    producer = {b: la for la in layers if la for b in la.outputs}
    consumers: Dict[str, List[_Layer]] = {}
    for la in layers:
        for b in la.inputs if la else ():
            consumers.setdefault(b, []).append(la)
    for k, la in enumerate(layers):
        if la is None or not _is_global_mean(la):
            continue
        users = consumers.get(la.outputs[0], [])
        keepdims = la.params.get(4, "0") != "0"
        if keepdims and (not users or any(u.type not in FLATTENING for u in users)):
            continue
        if not _is_spatial_blob(la.inputs[0], producer):
            continue
        lines[k + 2] = f"Pooling {la.name} 1 1 {la.inputs[0]} {la.outputs[0]} 0=1 4=1"
    return "\n".join(lines) + "\n"
