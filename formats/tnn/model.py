"""The ``.tnnmodel`` binary: per-layer resources keyed by layer name (tnn.md §3).

A :class:`Resource` keeps the layer's type string, name and its fields in file order (raw buffers,
``has_bias``/``bias_term`` ints). Parsing dispatches the body on the type string; writing emits
the same fields in the same order, always with the v2 magic and real dims.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ptqconv.formats.tnn.binary import INT8, MAGIC_V2, MAGICS, Cursor, RawBuffer, Writer

MAX_RESOURCES = 10000
BLOB_SCALE = "BlobScale"
BLOB_SCALE_SUFFIX = "_scale_data_"

# Layer type ids written in the record header (tnn.md §2.1).
LAYER_IDS = {"Convolution": 1, "BatchNormCxx": 2, "BatchNormalization": 2, "Scale": 16,
             "InnerProduct": 19, "Deconvolution": 22, "PReLU": 35, "Add": 38, "Mul": 42,
             "Sub": 108, "Div": 175, BLOB_SCALE: 600}

CONV_TYPES = ("Convolution", "Deconvolution")
ELEMENT_TYPES = ("Add", "Mul", "Sub", "Div", "Maximum", "Minimum")
RESOURCE_TYPES = frozenset(CONV_TYPES + ELEMENT_TYPES + (
    "InnerProduct", "BatchNormCxx", "BatchNormalization", "Scale", "PReLU", BLOB_SCALE))


@dataclass
class Resource:
    """One record: ``type_str``, layer ``name``, ``fields`` in file order (name -> RawBuffer or
    int), the file ``offset`` of its header and the header's layer type id."""

    type_str: str
    name: str
    fields: Dict[str, object] = field(default_factory=dict)
    offset: int = 0
    layer_id: Optional[int] = None

    def buffer(self, key: str) -> Optional[RawBuffer]:
        """The raw buffer ``key`` or None."""
        value = self.fields.get(key)
        return value if isinstance(value, RawBuffer) else None


@dataclass
class ModelFile:
    """A parsed ``.tnnmodel``: resources by name (file order kept) and the constant map."""

    magic: int
    resources: Dict[str, Resource]
    constants: Dict[str, RawBuffer] = field(default_factory=dict)


def _int8_extras(cur: Cursor, fields: Dict[str, object]) -> None:
    """After an INT8 filter: new layout zero_point (INT8) + scale, old layout scale only."""
    first = cur.raw_buffer("int8 scale or zero point")
    if first.data_type == INT8:
        fields["zero_point"] = first
        fields["scale"] = cur.raw_buffer("int8 weight scale")
    else:
        fields["scale"] = first


def _body(cur: Cursor, type_str: str) -> Dict[str, object]:
    fields: Dict[str, object] = {}
    if type_str in CONV_TYPES:
        fields["name"] = cur.string("resource name")
        fields["has_bias"] = cur.i32("has_bias")
        fields["filter"] = cur.raw_buffer("filter")
        if fields["has_bias"]:
            fields["bias"] = cur.raw_buffer("bias")
        if fields["filter"].data_type == INT8:
            _int8_extras(cur, fields)
    elif type_str == "InnerProduct":
        fields["name"] = cur.string("resource name")
        fields["weight"] = cur.raw_buffer("weight")
        fields["bias"] = cur.raw_buffer("bias")
        if fields["weight"].data_type == INT8:
            _int8_extras(cur, fields)
    elif type_str in ("BatchNormCxx", "BatchNormalization"):
        fields["scale"] = cur.raw_buffer("batchnorm scale")
        fields["bias"] = cur.raw_buffer("batchnorm bias")
    elif type_str == "Scale":
        fields["name"] = cur.string("resource name")
        fields["bias_term"] = cur.i32("bias_term")
        fields["scale"] = cur.raw_buffer("scale")
        if fields["bias_term"]:
            fields["bias"] = cur.raw_buffer("bias")
    elif type_str == "PReLU":
        fields["name"] = cur.string("resource name")
        fields["slope"] = cur.raw_buffer("slope")
    elif type_str in ELEMENT_TYPES:
        fields["element"] = cur.raw_buffer("constant operand")
    elif type_str == BLOB_SCALE:
        first = cur.raw_buffer("blob scale")
        if first.data_type == INT8:
            fields["zero_point"] = first
            fields["scale"] = cur.raw_buffer("blob scale")
        else:
            fields["scale"] = first
        fields["bias"] = cur.raw_buffer("blob scale bias")
    return fields


def parse_model(data: bytes, path: str) -> ModelFile:
    """Parse ``.tnnmodel`` bytes; malformed input raises ``ModelFormatError`` with the offset."""
    cur = Cursor(data, path)
    magic = cur.u32("magic")
    if magic not in MAGICS:
        cur.fail(f"bad magic 0x{magic:08X} (expected 0xFABC0002 or 0xFABC0004); "
                 "files without a magic (very old TNN) are not supported", 0)
    count = cur.i32("resource count") & 0x1FFFFFFF
    if count >= MAX_RESOURCES or count * 12 > cur.remaining():
        cur.fail(f"resource count {count} is impossible for a file of {len(data)} bytes", 4)
    resources: Dict[str, Resource] = {}
    for _ in range(count):
        start = cur.pos
        layer_id = cur.i32("layer type")
        type_str = cur.string("layer type string")
        name = cur.string("layer name")
        if type_str not in RESOURCE_TYPES:
            cur.fail(f"resource '{name}' has type '{type_str}', which has no known resource "
                     "layout", start)
        if name in resources:
            cur.fail(f"resource '{name}' appears twice", start)
        resources[name] = Resource(type_str, name, _body(cur, type_str), start, layer_id)
    constants: Dict[str, RawBuffer] = {}
    if cur.remaining() >= 4:
        start = cur.pos
        cmagic = cur.u32("constant map magic")
        if cmagic not in MAGICS:
            cur.fail(f"{cur.remaining() + 4} bytes after the last resource do not start a "
                     f"constant map (magic 0x{cmagic:08X})", start)
        n = cur.i32("constant count")
        if n < 0 or n * 16 > cur.remaining():
            cur.fail(f"constant count {n} is impossible here", start + 4)
        for _ in range(n):
            key = cur.string("constant name")
            constants[key] = cur.raw_buffer(f"constant '{key}'")
    if cur.remaining():
        cur.fail(f"{cur.remaining()} unexpected bytes at the end of the file")
    return ModelFile(magic, resources, constants)


def render_model(resources: List[Resource]) -> bytes:
    """Serialize ``resources`` in the given order (v2 magic, header count, records)."""
    w = Writer()
    w.u32(MAGIC_V2)
    w.i32(len(resources))
    for res in resources:
        w.i32(LAYER_IDS.get(res.type_str, 0) if res.layer_id is None else res.layer_id)
        w.string(res.type_str)
        w.string(res.name)
        for key, value in res.fields.items():
            if key == "name":
                w.string(value)
            elif isinstance(value, RawBuffer):
                w.raw_buffer(value)
            else:
                w.i32(int(value))
    return w.getvalue()

