"""ncnn ``.param`` text: parsing into :class:`ParamLayer` records and printing them back.

Layout (shared specs/ncnn.md §1): magic ``7767517``; ``layer_count blob_count``; one line per
layer ``Type name n_in n_out in... out... id=value ...``. A value is an int, a float (the token
holds ``.``, ``e`` or ``E``), a string, or an array (old style ``-233XX=count,v,...`` or new style
``id=v1,v2,...``). Every problem is a :class:`ModelFormatError` naming the file and line.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Dict, List, Tuple, Union

from ptqconv.core.errors import ModelFormatError

MAGIC = 7767517
MAX_PARAM_ID = 32          # ids 0..31
ARRAY_KEY_BASE = -23300    # old-style array key: -(23300 + id)
FLT_MAX = 3.402823e38
NAME_LIMIT = 255           # ncnn reads type/layer/blob names with %255s

Value = Union[int, float, str, List[Union[int, float]]]


@dataclass
class ParamLayer:
    """One layer line: type, unique name, bottom/top blob names, ``{id: value}``, its line."""

    type: str
    name: str
    inputs: List[str]
    outputs: List[str]
    params: Dict[int, Value] = field(default_factory=dict)
    line: int = 0


@dataclass
class ParamFile:
    """A parsed ``.param``: its layers in file order and the declared counts."""

    path: str
    layers: List[ParamLayer]
    layer_count: int
    blob_count: int


def _is_float_token(tok: str) -> bool:
    return any(ch in tok for ch in ".eE")


def _number(tok: str, path, line: int, key: str):
    try:
        return float(tok) if _is_float_token(tok) else int(tok)
    except ValueError:
        raise ModelFormatError(path, f"line {line}", f"parameter {key}: '{tok}' is not a number") \
            from None


def parse_value(key: str, value: str, path, line: int) -> Tuple[int, Value]:
    """Parse one ``key=value`` pair into ``(param id, value)``."""
    try:
        k = int(key)
    except ValueError:
        raise ModelFormatError(path, f"line {line}", f"'{key}={value}' is not an id=value "
                               f"parameter") from None
    if k <= ARRAY_KEY_BASE:
        pid = ARRAY_KEY_BASE - k
        items = value.split(",") if value else []
        if not items:
            raise ModelFormatError(path, f"line {line}", f"array parameter {key} has no count")
        count = _number(items[0], path, line, key)
        if not isinstance(count, int) or count != len(items) - 1:
            raise ModelFormatError(path, f"line {line}", f"array parameter {key} declares "
                                   f"{items[0]} values but lists {len(items) - 1}")
        arr = [_number(t, path, line, key) for t in items[1:]]
        return _check_id(pid, key, path, line), arr
    pid = _check_id(k, key, path, line)
    if value[:1].isalpha() or value[:1] == '"':
        return pid, value.strip('"')
    if "," in value:
        return pid, [_number(t, path, line, key) for t in value.split(",") if t != ""]
    return pid, _number(value, path, line, key)


def _check_id(pid: int, key: str, path, line: int) -> int:
    if not 0 <= pid < MAX_PARAM_ID:
        raise ModelFormatError(path, f"line {line}", f"parameter id {key} is out of range "
                               f"(ids are 0..31)")
    return pid


def _int(tok: str, path, line: int, what: str) -> int:
    try:
        return int(tok)
    except ValueError:
        raise ModelFormatError(path, f"line {line}", f"{what} '{tok}' is not an integer") from None


def parse_param(text: str, path) -> ParamFile:
    """Parse the text of a ``.param`` file; checks counts, names and blob definitions."""
    lines = text.split("\n")
    numbered = [(k + 1, ln.split()) for k, ln in enumerate(lines)]
    numbered = [(n, toks) for n, toks in numbered if toks]
    if not numbered:
        raise ModelFormatError(path, "line 1", "empty param file")
    n0, magic = numbered[0]
    if len(magic) != 1 or magic[0] != str(MAGIC):
        raise ModelFormatError(path, f"line {n0}", f"wrong magic '{' '.join(magic)[:20]}' "
                               f"(an ncnn text param starts with {MAGIC})")
    if len(numbered) < 2 or len(numbered[1][1]) != 2:
        raise ModelFormatError(path, f"line {numbered[1][0] if len(numbered) > 1 else n0 + 1}",
                               "expected '<layer_count> <blob_count>'")
    n1, (lc, bc) = numbered[1]
    layer_count = _int(lc, path, n1, "layer count")
    blob_count = _int(bc, path, n1, "blob count")
    if layer_count <= 0 or blob_count <= 0:
        raise ModelFormatError(path, f"line {n1}", "layer and blob counts must be positive")
    body = numbered[2:]
    if len(body) != layer_count:
        raise ModelFormatError(path, f"line {n1}", f"declares {layer_count} layers but the file "
                               f"has {len(body)} layer lines")
    layers, names, produced = [], set(), set()
    blobs_seen: Dict[str, None] = {}
    for line, toks in body:
        layer = _parse_layer(toks, path, line)
        if layer.name in names:
            raise ModelFormatError(path, f"line {line}", f"duplicate layer name '{layer.name}'")
        names.add(layer.name)
        for b in layer.inputs:
            if b not in produced:
                raise ModelFormatError(path, f"line {line}", f"layer '{layer.name}' uses blob "
                                       f"'{b}' before any layer defines it")
            blobs_seen[b] = None
        for b in layer.outputs:
            if b in produced:
                raise ModelFormatError(path, f"line {line}", f"blob '{b}' is produced twice "
                                       f"(again by layer '{layer.name}')")
            produced.add(b)
            blobs_seen[b] = None
        layers.append(layer)
    if len(blobs_seen) > blob_count:
        raise ModelFormatError(path, f"line {n1}", f"declares {blob_count} blobs but the layers "
                               f"name {len(blobs_seen)}")
    return ParamFile(str(path), layers, layer_count, blob_count)


def _parse_layer(toks: List[str], path, line: int) -> ParamLayer:
    if len(toks) < 4:
        raise ModelFormatError(path, f"line {line}", "a layer line needs "
                               "'<type> <name> <n_in> <n_out>'")
    ltype, name = toks[0], toks[1]
    n_in = _int(toks[2], path, line, "input count")
    n_out = _int(toks[3], path, line, "output count")
    if n_in < 0 or n_out < 0 or 4 + n_in + n_out > len(toks):
        raise ModelFormatError(path, f"line {line}", f"layer '{name}' declares {n_in} input(s) "
                               f"and {n_out} output(s) but the line lists only "
                               f"{max(len(toks) - 4, 0)} names and parameters")
    inputs = toks[4:4 + n_in]
    outputs = toks[4 + n_in:4 + n_in + n_out]
    for b in inputs + outputs:
        if "=" in b:
            raise ModelFormatError(path, f"line {line}", f"layer '{name}': expected a blob name, "
                                   f"got parameter '{b}' (blob counts do not match)")
    params: Dict[int, Value] = {}
    for tok in toks[4 + n_in + n_out:]:
        key, sep, value = tok.partition("=")
        if not sep:
            raise ModelFormatError(path, f"line {line}", f"layer '{name}': '{tok}' is not an "
                                   f"id=value parameter (blob counts do not match?)")
        pid, val = parse_value(key, value, path, line)
        params[pid] = val
    return ParamLayer(ltype, name, inputs, outputs, params, line)


# ---- writing ------------------------------------------------------------------------------------
def format_float(v: float) -> str:
    """A float token ncnn reads as float: C ``%e`` (always holds ``e``); inf/nan made finite."""
    v = float(v)
    if math.isnan(v):
        v = 0.0
    v = max(-FLT_MAX, min(FLT_MAX, v))
    return "%e" % v


def format_param(pid: int, value: Value) -> str:
    """Format one parameter; arrays in the old ``-233XX=count,...`` style every ncnn reads."""
    if isinstance(value, (list, tuple)):
        is_float = any(isinstance(v, float) for v in value)
        items = [format_float(v) if is_float else str(int(v)) for v in value]
        return f"{ARRAY_KEY_BASE - pid}={len(items)}" + "".join("," + t for t in items)
    if isinstance(value, bool):
        return f"{pid}={int(value)}"
    if isinstance(value, float):
        return f"{pid}={format_float(value)}"
    if isinstance(value, int):
        return f"{pid}={value}"
    return f"{pid}={value}"


def format_layer(layer: ParamLayer) -> str:
    """One aligned layer line (parameters in id order)."""
    head = f"{layer.type:<24} {layer.name:<24} {len(layer.inputs)} {len(layer.outputs)}"
    parts = [head] + list(layer.inputs) + list(layer.outputs)
    parts += [format_param(k, layer.params[k]) for k in sorted(layer.params)]
    return " ".join(parts)


def format_param_file(layers: List[ParamLayer]) -> str:
    """The whole ``.param`` text for ``layers`` (blob count = distinct blob names)."""
    blobs = dict.fromkeys(b for layer in layers for b in layer.inputs + layer.outputs)
    lines = [str(MAGIC), f"{len(layers)} {len(blobs)}"] + [format_layer(x) for x in layers]
    return "\n".join(lines) + "\n"


_UNSAFE = re.compile(r"[\s=,]")


def safe_token(name: str, fallback: str) -> str:
    """A layer/blob name ncnn can read back: no whitespace, '=' or ',', at most 255 chars."""
    token = _UNSAFE.sub("_", str(name or ""))[:NAME_LIMIT]
    return token or fallback
