"""The ``mnn`` and ``mnn-int8`` writers: IR (+ QuantTable) -> one ``.mnn`` file, written atomically."""
from __future__ import annotations

from ptqconv.core.atomic import atomic_outputs
from ptqconv.core.log import step
from ptqconv.formats.mnn.export import Exporter
from ptqconv.formats.mnn.int8plan import plan_int8


def mnn_bytes(graph, table=None, options=None, source="graph") -> bytes:
    """Serialize ``graph`` as an ``.mnn`` buffer; with ``table``, its int8 layers are written the
    way MNN 3.x's own quantizer writes them. Option ``weight_only`` (mnn-int8) keeps the
    quantized weights but writes no activation quantInfo, so MNN computes in float."""
    options = options or {}
    plan, quant = ({}, {}) if table is None else plan_int8(graph, table, options)
    weight_only = bool(options.get("weight_only", False))
    if table is not None:
        step(f"mnn-int8: {len(plan)} convolution(s) with int8 weights"
             + (" (weight-only: float compute)" if weight_only else
                f", {len(quant)} tensor(s) with quantInfo"))
    return Exporter(graph, plan, quant, source, weight_only).run()


def write_mnn(graph, table, paths, options=None):
    """``ModelFormat.write``: write ``paths[0]``; returns the written paths."""
    data = mnn_bytes(graph, table, options, source=graph.name or "graph")
    with atomic_outputs([paths[0]]) as (tmp,):
        with open(tmp, "wb") as f:
            f.write(data)
    return [paths[0]]
