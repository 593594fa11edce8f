"""The ``.tnnproto`` text: tokenising, the header/input/output lines and the layer lines.

The file is split on ``,`` after deleting every ``"`` and newline (tnn.md §1.1); piece 0 is the
header, 1 the inputs, 2 the (ignored) blob list, 3 the outputs, 4 the (ignored) layer count, and
every further non-empty piece one layer. Each piece remembers the physical line it starts on so
errors can name it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from ptqconv.core.errors import ModelFormatError
from ptqconv.formats.tnn.binary import MAGIC_V1, MAGIC_V2

QUANTIZED_PREFIX = "Quantized"
MAX_PIECE = 4095  # upstream copies each piece into a 4096-byte buffer
FORBIDDEN_NAME_CHARS = set(',": \t\r\n')


@dataclass
class ProtoLayer:
    """One layer line: base ``type`` (prefix stripped), ``quantized`` flag, blob names, the
    positional parameter tokens and the 1-based ``line`` it was read from."""

    type: str
    name: str
    inputs: List[str]
    outputs: List[str]
    params: List[str] = field(default_factory=list)
    quantized: bool = False
    line: int = 0

    @property
    def type_string(self) -> str:
        """The type as written in the file (with the ``Quantized`` prefix when int8)."""
        return QUANTIZED_PREFIX + self.type if self.quantized else self.type


@dataclass
class ProtoInput:
    """A network input: name, dims and TNN data type (0 float)."""

    name: str
    dims: Tuple[int, ...]
    data_type: int = 0


@dataclass
class Proto:
    """A parsed ``.tnnproto``."""

    magic: int
    inputs: List[ProtoInput]
    outputs: List[str]
    layers: List[ProtoLayer]
    output_line: int = 4


def _pieces(text: str):
    """Split ``text`` into (piece, line) as the TNN reader does."""
    result, line, start = [], 1, 0
    for k, ch in enumerate(text + ","):
        if ch == ",":
            raw = text[start:k]
            lead = len(raw) - len(raw.lstrip(" \t\r\n\""))
            piece_line = line - raw.count("\n") + raw[:lead].count("\n")
            piece = raw.replace('"', "").replace("\n", "").replace("\r", "").strip()
            result.append((piece, piece_line))
            start = k + 1
        elif ch == "\n":
            line += 1
    return result


def _int(token: str, path: str, line: int, what: str) -> int:
    try:
        return int(token)
    except ValueError:
        raise ModelFormatError(path, f"line {line}", f"{what}: '{token}' is not an integer") \
            from None


def parse_proto(text: str, path: str, known_types) -> Proto:
    """Parse proto ``text`` (from ``path``); ``known_types`` is the set of legal base type
    strings. Raises :class:`ModelFormatError` naming the line on any malformed piece."""
    pieces = _pieces(text)
    if len(pieces) < 5:
        raise ModelFormatError(path, f"line {pieces[-1][1] if pieces else 1}",
                               f"truncated proto: {len(pieces)} header lines, need 5 "
                               "(header, inputs, blobs, outputs, layer count)")
    header, hline = pieces[0][0].split(), pieces[0][1]
    if len(header) < 4:
        raise ModelFormatError(path, f"line {hline}", "header needs 4 fields "
                               "('1 <blob count> 1 <magic>'); is this a .tnnproto file?")
    magic = _int(header[3], path, hline, "header magic")
    if magic not in (MAGIC_V1, MAGIC_V2):
        raise ModelFormatError(path, f"line {hline}", f"bad magic {magic} (expected "
                               f"{MAGIC_V1} or {MAGIC_V2})")
    inputs = _parse_inputs(pieces[1][0], pieces[1][1], magic, path)
    outputs = pieces[3][0].split()
    if not outputs:
        raise ModelFormatError(path, f"line {pieces[3][1]}", "no output blob listed")
    layers = [_parse_layer(piece, line, path, known_types)
              for piece, line in pieces[5:] if piece]
    return Proto(magic, inputs, outputs, layers, pieces[3][1])


def _parse_inputs(piece: str, line: int, magic: int, path: str) -> List[ProtoInput]:
    result = []
    for part in piece.split(":"):
        tokens = part.split()
        if not tokens:
            raise ModelFormatError(path, f"line {line}", "empty input description")
        name = tokens[0]
        if magic == MAGIC_V1:
            dims = tuple(_int(t, path, line, f"input '{name}' dim") for t in tokens[1:])
            data_type = 0
        else:
            if len(tokens) < 2:
                raise ModelFormatError(path, f"line {line}", f"input '{name}' has no dim count")
            ndims = _int(tokens[1], path, line, f"input '{name}' dim count")
            if ndims < 0 or len(tokens) not in (2 + ndims, 3 + ndims):
                raise ModelFormatError(path, f"line {line}", f"input '{name}' declares {ndims} "
                                       f"dims but has {len(tokens) - 2} values")
            dims = tuple(_int(t, path, line, f"input '{name}' dim") for t in tokens[2:2 + ndims])
            # The quantized golden omits the data type (tnn.md §1.3): default to float.
            data_type = _int(tokens[-1], path, line, f"input '{name}' data type") \
                if len(tokens) == 3 + ndims else 0
        if any(d < 0 for d in dims):
            raise ModelFormatError(path, f"line {line}", f"input '{name}' has a negative dim")
        if any(i.name == name for i in result):
            raise ModelFormatError(path, f"line {line}", f"input '{name}' is listed twice")
        result.append(ProtoInput(name, dims, data_type))
    return result


def _parse_layer(piece: str, line: int, path: str, known_types) -> ProtoLayer:
    tokens = piece.split()
    where = f"line {line}"
    if len(tokens) < 4:
        raise ModelFormatError(path, where, f"layer line needs '<type> <name> <inputs> <outputs>'"
                               f", got {len(tokens)} field(s)")
    type_string, name = tokens[0], tokens[1]
    quantized = type_string.startswith(QUANTIZED_PREFIX) and type_string != QUANTIZED_PREFIX
    base = type_string[len(QUANTIZED_PREFIX):] if quantized else type_string
    if base not in known_types:
        raise ModelFormatError(path, where, f"unknown layer type '{type_string}' "
                               f"(layer '{name}')")
    n_in = _int(tokens[2], path, line, f"layer '{name}' input count")
    n_out = _int(tokens[3], path, line, f"layer '{name}' output count")
    if n_in < 0 or n_out < 1 or 4 + n_in + n_out > len(tokens):
        raise ModelFormatError(path, where, f"layer '{name}' declares {n_in} input(s) and "
                               f"{n_out} output(s) but the line has {len(tokens) - 4} name(s) "
                               "and parameters")
    inputs = tokens[4:4 + n_in]
    outputs = tokens[4 + n_in:4 + n_in + n_out]
    return ProtoLayer(base, name, inputs, outputs, tokens[4 + n_in + n_out:], quantized, line)


# ---- writing -------------------------------------------------------------------------------

def _line(content: str) -> str:
    return f'"{content} ,"\n'


def render_proto(inputs: List[ProtoInput], outputs: List[str], layers: List[ProtoLayer],
                 blob_count: Optional[int] = None) -> str:
    """Render a v2 ``.tnnproto`` (tnn.md §6 writer checklist): header, inputs sorted by name
    with their data type, the sorted blob list, outputs, the layer count and the layers."""
    blobs = sorted({i.name for i in inputs} | {b for layer in layers
                                               for b in layer.inputs + layer.outputs})
    count = len(blobs) if blob_count is None else blob_count
    text = [_line(f"1 {count} 1 {MAGIC_V2}")]
    text.append(_line(" : ".join(f"{i.name} {len(i.dims)} " + " ".join(str(d) for d in i.dims)
                                 + f" {i.data_type}"
                                 for i in sorted(inputs, key=lambda i: i.name))))
    text.append(_line(" " + " ".join(blobs)))
    text.append(_line(" ".join(outputs)))
    text.append(_line(f" {len(layers)}"))
    for layer in layers:
        fields = [layer.type_string, layer.name, str(len(layer.inputs)), str(len(layer.outputs))]
        fields += layer.inputs + layer.outputs + [str(p) for p in layer.params]
        text.append(_line(" ".join(fields)))
    return "".join(text)
