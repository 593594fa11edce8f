"""Plain-language reasons for a layer's quantization error, shared by the report and by
automatic mixed precision (which says why each float layer stayed float)."""
from __future__ import annotations

import math
from typing import List, Optional

from ptqconv.core.diagnose.weights import STARVED, WeightRange

CLIP_NOTE = 1e-3   # more than 0.1 % of the input clipped is worth a mention
STARVED_NOTE = 0.05  # per-tensor weights fail visibly when 5 % of the channels starve
WEIGHT_GAP_DB = 6.0  # per-channel steps would gain more than 1 bit


def starves(w: Optional[WeightRange]) -> bool:
    """True when per-tensor weights leave a visible share of the channels with few codes."""
    return w is not None and w.per_tensor and len(w.starved) >= STARVED_NOTE * w.channels


def db(value: float) -> str:
    """Format a dB value (inf-safe)."""
    return "inf" if math.isinf(value) and value > 0 else f"{value:.1f} dB"


def weight_reasons(w: Optional[WeightRange]) -> List[str]:
    """Why the weights quantize badly, if they do: channel ranges far apart under one step."""
    if w is None:
        return []
    kind = "depthwise " if w.depthwise else ""
    if starves(w):
        return [f"per-tensor {kind}weights with channel ranges {w.spread:.1f}x apart: "
                f"{len(w.starved)} of {w.channels} channels get fewer than {STARVED} of 127 codes "
                f"(median channel weight SQNR {db(w.sqnr_table)}; per-channel steps would "
                f"give {db(w.sqnr_per_channel)})"]
    if w.sqnr_per_channel - w.sqnr_table > WEIGHT_GAP_DB:
        return [f"{kind}median channel weight SQNR {db(w.sqnr_table)} where per-channel "
                f"steps give {db(w.sqnr_per_channel)}"]
    return []


def activation_reasons(overflow: Optional[float], clipped: Optional[float]) -> List[str]:
    """Why the input activation quantizes badly: values clipped by the chosen threshold."""
    if clipped is not None and clipped > CLIP_NOTE:
        return [f"{100 * clipped:.2f}% of its input values are clipped by the threshold "
                f"({100 * (overflow or 0):.2f}% saturate)"]
    return []


def sensitivity_reason(noise: float, total_noise: Optional[float]) -> str:
    """How much output noise the layer causes when it alone is quantized."""
    sqnr = 10 * math.log10(1 / noise) if noise > 0 else math.inf
    text = f"quantized alone it leaves the model output at {db(sqnr)} SQNR"
    if total_noise and total_noise > 0 and noise > 0:
        text += f" ({100 * noise / total_noise:.0f}% of the all-int8 output noise)"
    return text


def explain(noise: float, total_noise: Optional[float], weights: Optional[WeightRange] = None,
            overflow: Optional[float] = None, clipped: Optional[float] = None) -> str:
    """One sentence: the layer's effect on the output and its likely causes."""
    causes = weight_reasons(weights) + activation_reasons(overflow, clipped)
    text = sensitivity_reason(noise, total_noise)
    return text + ("; " + "; ".join(causes) if causes else "")
