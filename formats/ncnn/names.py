"""Readable, unique ncnn layer names for IR nodes (shared by the writer and the ``.table``
format, whose keys are layer names)."""
from __future__ import annotations

from typing import Dict, Iterable, Set

from ptqconv.formats.ncnn.param import safe_token


def unique(base: str, used: Set[str]) -> str:
    """``base`` or ``base_1``, ``base_2``... whichever is not in ``used`` (then marked used)."""
    name, k = base, 1
    while name in used:
        name, k = f"{base}_{k}", k + 1
    used.add(name)
    return name


def layer_names(nodes: Iterable) -> Dict[str, str]:
    """Map each node name to its ncnn layer name: the node name with whitespace, '=' and ','
    replaced, cut to 255 characters, de-duplicated in node order."""
    used: Set[str] = set()
    return {n.name: unique(safe_token(n.name, n.op), used) for n in nodes}
