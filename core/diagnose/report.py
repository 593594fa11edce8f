"""The diagnosis report: terminal table of the worst layers, and a Markdown or self-contained
HTML file (chosen by the path's ending) with tables and, when matplotlib is installed, plots."""
from __future__ import annotations

import math
import os
from typing import List

from ptqconv.core.atomic import atomic_outputs
from ptqconv.core.diagnose import plots
from ptqconv.core.diagnose.explain import db, explain, starves
from ptqconv.core.diagnose.render import html_document, markdown, text_table
from ptqconv.core.qtable import FLOAT

WORST_ROWS = 15
EXPLAINED = 5
PLOTTED = 6


def _db(v) -> str:
    return "inf" if v is None or (math.isinf(v) and v > 0) else f"{v:.1f}"


def _pct(v) -> str:
    return f"{100 * v:.3f}"


def kind(r) -> str:
    """Short layer kind: ``Conv dw`` for depthwise."""
    return f"{r.op} dw" if r.depthwise else r.op


def share(diag, r) -> str:
    """The layer's alone-output noise as a share of the all-int8 output noise."""
    total = diag.final["noise"] if diag.final else 0
    if r.alone is None or not total:
        return "-"
    return f"{100 * r.alone['noise'] / total:.0f}%"


def _weights_cells(r):
    w = r.weights
    if w is None:
        return ["-", "-", "-"]
    return [f"{w.spread:.1f}x", f"{len(w.starved)}/{w.channels}",
            f"{_db(w.sqnr_table)} / {_db(w.sqnr_per_channel)}"]


LAYER_HEADERS = ["rank", "layer", "kind", "output SQNR alone (dB)", "share of output noise",
                 "own SQNR (dB)", "accumulated SQNR (dB)", "accumulated cosine", "max abs error",
                 "overflow %", "clipped %", "weight spread", "starved channels",
                 "channel weight SQNR table / per-channel (dB)"]


def layer_rows(diag, layers) -> List[list]:
    """Table rows for ``layers`` (rank = position in the sensitivity ranking)."""
    rank = {r.name: k + 1 for k, r in enumerate(diag.ranked())}
    return [[rank[r.name], r.name, kind(r), _db(r.alone["sqnr"]) if r.alone else "-",
             share(diag, r), _db(r.own["sqnr"]), _db(r.accumulated["sqnr"]),
             f"{r.accumulated['cosine']:.5f}", f"{r.accumulated['max_abs']:.4g}",
             _pct(r.overflow), _pct(r.clipped)] + _weights_cells(r) for r in layers]


def terminal_table(diag, rows: int = 10) -> str:
    """The worst ``rows`` layers as an aligned text table, with the model-output line."""
    headers = ["layer", "kind", "out dB alone", "share", "own dB", "acc dB", "acc cos",
               "overflow%", "clipped%", "w spread", "starved"]
    body = [[r.name, kind(r), _db(r.alone["sqnr"]) if r.alone else "-", share(diag, r),
             _db(r.own["sqnr"]), _db(r.accumulated["sqnr"]), f"{r.accumulated['cosine']:.4f}",
             _pct(r.overflow), _pct(r.clipped)]
            + (_weights_cells(r)[:2] if r.weights else ["-", "-"])
            for r in diag.ranked()[:rows]]
    head = (f"model output: cosine {diag.final['cosine']:.5f}, SQNR {db(diag.final['sqnr'])}, "
            f"top-1 agreement {100 * diag.agreement:.1f}% over {diag.inputs} input(s)")
    if diag.top1:
        head += f"; top-1 fp32 {diag.top1['fp32']:.2f}% int8 {diag.top1['int8']:.2f}%"
    return f"{head}\nworst layers (most sensitive first):\n{text_table(headers, body)}"


def _output_block(diag):
    rows = [["cosine similarity (mean over inputs)", f"{diag.final['cosine']:.6f}"],
            ["SQNR", db(diag.final["sqnr"])],
            ["max abs error", f"{diag.final['max_abs']:.4g}"],
            ["top-1 agreement with fp32", f"{100 * diag.agreement:.2f}%"]]
    if diag.top1:
        rows += [["top-1 fp32", f"{diag.top1['fp32']:.2f}%"],
                 ["top-1 int8", f"{diag.top1['int8']:.2f}%"]]
    return [("h2", "Model output (int8 vs fp32)"), ("table", ["metric", "value"], rows)]


def _responsible_block(diag):
    worst = diag.ranked()[:EXPLAINED]
    items = [f"{r.name} ({kind(r)}): " + explain(r.sensitivity, diag.final["noise"], r.weights,
                                                  r.overflow, r.clipped) for r in worst]
    dw = sum(r.depthwise for r in worst)
    wide = sum(1 for r in worst if starves(r.weights))
    summary = (f"The {len(worst)} most sensitive layers (each quantized alone, the others fp32) "
               f"include {dw} depthwise convolution(s); {wide} have per-tensor weights whose "
               f"channel ranges are far apart.")
    return [("h2", "Layers responsible"), ("p", summary), ("ul", items)]


def _mixed_block(m):
    kept = m.layers - len(m.float_layers)
    blocks = [("h2", "Automatic mixed precision"),
              ("p", f"Metric {m.metric}, budget: {m.budget_text()}, measured on {m.inputs} "
                    f"held-aside calibration input(s) that were not used to calibrate. One pass "
                    f"ranks the layers (each quantized alone), then each trial is one pass of "
                    f"the quantized model: {m.passes} pass(es) in all, {m.seconds:.1f}s."),
              ("p", f"Result: {len(m.float_layers)} of {m.layers} int8 layer(s) kept float, "
                    f"{kept} ({100 * kept / max(m.layers, 1):.1f}%) stay int8; the budget is "
                    f"{'met' if m.met else 'NOT met'}."
                    + (f" fp32 top-1 on these inputs: {m.baseline:.2f}%." if m.baseline is not None
                       else "") + (f" Note: {m.note}" if m.note else ""))]
    blocks.append(("table", ["float layers", "measured", "within budget", "detail"],
                   [[t.floats, m.value_text(t.value), "yes" if t.met else "no", t.detail or "-"]
                    for t in m.trials]))
    if m.float_layers:
        blocks.append(("table", ["layer kept float", "why"],
                       [[n, m.reasons.get(n, "")] for n in m.float_layers]))
    return blocks


def _weights_block(diag):
    rows = [[r.name, kind(r), r.weights.channels, f"{r.weights.spread:.1f}x",
             len(r.weights.far), len(r.weights.starved),
             "per-tensor" if r.weights.per_tensor else "per-channel",
             _db(r.weights.sqnr_table), _db(r.weights.sqnr_per_channel)]
            for r in diag.layers if r.weights is not None and (r.weights.far or r.weights.starved)]
    rows.sort(key=lambda row: -row[5] / max(row[2], 1))
    return [("h2", "Weight ranges per output channel"),
            ("p", "Channels are flagged when their range is 4x above or below the median channel "
                  "(far) or when one per-tensor step would leave them fewer than 16 of 127 codes "
                  "(starved): the usual reason per-tensor weights fail."),
            ("table", ["layer", "kind", "channels", "spread (max/median)", "far", "starved",
                       "table", "channel weight SQNR (dB)", "per-channel steps (dB)"], rows)]


NOTES = ["own: the layer quantized alone on its fp32 input, compared at its output; accumulated: "
         "the same tensor in the fully quantized model (errors of earlier layers included).",
         "output SQNR alone: model output when only this layer is int8 (the ranking key); share: "
         "its output noise energy over the all-int8 model's.",
         "overflow: fraction of the layer's input values (fp32 model) whose code saturates "
         "(MNN's 'overflow ratio'); clipped: fraction beyond the threshold by more than half a "
         "step.",
         "channel weight SQNR: median over output channels of each channel's weight SQNR, with "
         "the table's steps and with per-channel absmax steps.",
         "SQNR = 10 log10(sum x^2 / sum (x - x_q)^2) over all inputs; cosine is averaged per "
         "input; below about 20 dB a layer is suspect."]


def build(diag, images) -> list:
    """The report's blocks."""
    meta = diag.table.meta
    floats = [n for n, p in diag.table.precision.items() if p == FLOAT]
    blocks = [("h1", f"Quantization diagnosis: {diag.model}"),
              ("p", f"Table: {meta.get('method', '?')} activations, {meta.get('weights', '?')} "
                    f"{meta.get('weight_method', '')} weights, backend {meta.get('backend', '?')}; "
                    f"{len(diag.layers)} int8 layer(s), {len(floats)} float. Measured on "
                    f"{diag.sources or f'{diag.inputs} input(s)'} in {diag.passes} streamed "
                    f"pass(es), {diag.seconds:.1f}s.")]
    blocks += _output_block(diag)
    if diag.layers:
        blocks += _responsible_block(diag)
    if diag.mixed is not None:
        blocks += _mixed_block(diag.mixed)
    worst = diag.ranked()[:WORST_ROWS]
    blocks += [("h2", "Worst layers"), ("table", LAYER_HEADERS, layer_rows(diag, worst))]
    captions = {"sqnr.png": "Per-layer SQNR", "activations.png":
                "Activation histograms of the most sensitive layers, threshold in red",
                "weights.png": "Weight range per output channel of the most sensitive layers"}
    if images:
        blocks.append(("h2", "Plots"))
        blocks += [("img", name, captions.get(name, name)) for name in images]
    blocks += _weights_block(diag)
    blocks += [("h2", "All layers (graph order)"), ("table", LAYER_HEADERS,
                                                    layer_rows(diag, diag.layers))]
    blocks += [("h2", "How to read this"), ("ul", NOTES)]
    return blocks


def write_report(diag, path: str) -> List[str]:
    """Write the report to ``path`` (``.html``: one self-contained file; otherwise Markdown
    with its PNGs in ``<stem>_files/``); returns the written paths."""
    images = plots.all_plots(diag, diag.ranked()[:PLOTTED])
    blocks = build(diag, list(images))
    if path.lower().endswith((".html", ".htm")):
        with atomic_outputs([path]) as (tmp,):
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(html_document(blocks, f"ptqconv diagnosis: {diag.model}", images))
        return [path]
    stem = os.path.splitext(os.path.basename(path))[0] + "_files"
    folder = os.path.join(os.path.dirname(os.path.abspath(path)), stem)
    names = list(images)
    targets = [path] + [os.path.join(folder, n) for n in names]
    with atomic_outputs(targets) as temps:
        with open(temps[0], "w", encoding="utf-8") as f:
            f.write(markdown(blocks, stem))
        for tmp, name in zip(temps[1:], names):
            with open(tmp, "wb") as f:
                f.write(images[name])
    return targets
