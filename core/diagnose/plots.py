"""PNG plots for the diagnosis report, drawn with matplotlib when it is installed (the optional
``plots`` extra); every function returns PNG bytes. Without matplotlib the report keeps its
tables."""
from __future__ import annotations

import io
import math
from typing import Dict

import numpy as np

from ptqconv.core.diagnose.weights import STARVED

SUSPECT_DB = 20.0  # below ~20 dB a layer is suspect (specs/algorithms.md §5.2)
HIST_BINS = 128


def available() -> bool:
    """True when matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _grid(plt, count):
    cols = min(3, max(1, count))
    rows = max(1, int(math.ceil(count / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.ravel()[count:]:
        ax.set_visible(False)
    return fig, axes.ravel()


def _log_axis(ax):
    from matplotlib.ticker import LogLocator, NullLocator
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(numticks=5))
    ax.yaxis.set_minor_locator(NullLocator())  # minor log ticks are slow and add nothing here


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    _pyplot().close(fig)
    return buf.getvalue()


def _finite(v, cap=80.0):
    return cap if math.isinf(v) and v > 0 else v


def sqnr_chart(diag) -> bytes:
    """Per-layer SQNR bars (accumulated in the int8 model; own = layer alone), the output SQNR
    with only that layer quantized, depthwise layers highlighted."""
    plt = _pyplot()
    layers = diag.layers
    x = np.arange(len(layers))
    fig, ax = plt.subplots(figsize=(max(8.0, 0.22 * len(layers) + 2), 4.2), layout="tight")
    colors = ["tab:orange" if r.depthwise else "tab:blue" for r in layers]
    ax.bar(x, [_finite(r.accumulated["sqnr"]) for r in layers], color=colors, width=0.8,
           label="accumulated (int8 model), orange = depthwise")
    ax.plot(x, [_finite(r.own["sqnr"]) for r in layers], "k_", markersize=9,
            label="own (layer alone, fp32 input)")
    if any(r.alone is not None for r in layers):
        ax.plot(x, [_finite(r.alone["sqnr"]) if r.alone else np.nan for r in layers], "r.-",
                linewidth=0.8, label="model output, this layer alone int8")
    ax.axhline(SUSPECT_DB, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels([r.name for r in layers], rotation=90, fontsize=6)
    ax.set_ylabel("SQNR (dB)")
    ax.set_title("Per-layer SQNR")
    ax.legend(fontsize=7, loc="upper right")
    return _png(fig)


def activation_histograms(diag, layers) -> bytes:
    """|x| histograms of the input activations of ``layers`` with the chosen threshold marked."""
    plt = _pyplot()
    fig, axes = _grid(plt, len(layers))
    for ax, r in zip(axes, layers):
        s = diag.stats.get(r.activation)
        if s is None or s.hist is None or s.bin_width == 0:
            ax.set_visible(False)
            continue
        upper = max(s.absmax, r.threshold) * 1.05
        counts = s.resampled(HIST_BINS, upper)
        edges = np.linspace(0, upper, HIST_BINS + 1)
        ax.stairs(np.maximum(counts, 0.5), edges, fill=True, color="tab:blue", baseline=0.5)
        ax.axvline(r.threshold, color="red", linewidth=1.2, label=f"threshold {r.threshold:.3g}")
        _log_axis(ax)
        ax.set_title(f"{r.name} input ({r.activation})", fontsize=8)
        ax.set_xlabel(f"|x|  (clipped {100 * r.clipped:.3f}%)", fontsize=7)
        ax.legend(fontsize=7)
    fig.subplots_adjust(left=0.06, right=0.98, top=0.93, bottom=0.1, hspace=0.5, wspace=0.25)
    return _png(fig)


def weight_range_chart(diag, layers) -> bytes:
    """Per-output-channel weight ranges of ``layers`` (sorted), with the level under which a
    channel gets fewer than 16 codes from one per-tensor step."""
    plt = _pyplot()
    layers = [r for r in layers if r.weights is not None]
    fig, axes = _grid(plt, len(layers))
    for ax, r in zip(axes, layers):
        w = r.weights
        starved = float(w.absmax.max()) * STARVED / 127
        ax.stairs(np.sort(w.absmax)[::-1], np.arange(w.channels + 1), fill=True,
                  color="tab:green", baseline=max(min(float(w.absmax.min()), starved), 1e-12) / 2)
        ax.axhline(starved, color="red", linewidth=1,
                   label=f"< {STARVED} codes per-tensor")
        _log_axis(ax)
        ax.set_title(f"{r.name}{' (depthwise)' if w.depthwise else ''}: spread {w.spread:.1f}x",
                     fontsize=8)
        ax.set_xlabel("output channels (sorted by range)", fontsize=7)
        ax.legend(fontsize=7)
    fig.subplots_adjust(left=0.06, right=0.98, top=0.93, bottom=0.1, hspace=0.5, wspace=0.25)
    return _png(fig)


def all_plots(diag, worst) -> Dict[str, bytes]:
    """{file name: PNG bytes} of every plot, or {} without matplotlib."""
    if not available() or not diag.layers:
        return {}
    plots = {"sqnr.png": sqnr_chart(diag), "activations.png": activation_histograms(diag, worst)}
    if any(r.weights is not None for r in worst):
        plots["weights.png"] = weight_range_chart(diag, worst)
    return plots
