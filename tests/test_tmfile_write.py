"""Writing tmfiles: round trips, onnxruntime equivalence, int8/uint8 layout walked field by field
with an independent parser, and Tengine's .scale tables."""
import math
import re
import struct

import numpy as np
import pytest

from conftest import shared_path
from ptqconv.core.ir.graph import Graph, Node, TensorInfo
from ptqconv.core.numeric import QuantSpec, act_from_range, round_half_away
from ptqconv.core.passes import canonicalize, fuse_activation
from ptqconv.core.qtable import INT8, QuantTable, WeightQuant
from ptqconv.core.runtime import make_session
from ptqconv.formats.onnx.qdq import insert_qdq
from ptqconv.formats.tmfile.container import parse_tmfile
from ptqconv.formats.tmfile.reader import convert_model, read_tmfile
from ptqconv.formats.tmfile.scale_table import read_scale_table, write_scale_table
from ptqconv.formats.tmfile.writer import tmfile_bytes, write_tmfile

GOLDEN_NAMES = ["mnist.tmfile", "lenet-int8.tmfile", "resnet18-cifar10-nosoftmax.tmfile",
                "resnet18-cifar10-nosoftmax_int8.tmfile",
                "resnet18-cifar10-nosoftmax-relu_int8.tmfile", "yolox_nano_relu.tmfile",
                "yolox_nano_relu_s_wf_int8.tmfile"]
WEIGHTED = ("Conv", "Gemm", "ConvTranspose")


def read_bytes(data, name="written.tmfile"):
    return convert_model(parse_tmfile(data, name), name)


# ---- a small graph using most ops the writer knows -------------------------------------------

def synthetic_graph():
    rng = np.random.default_rng(0)
    c = {}

    def const(name, value):
        c[name] = np.asarray(value)
        return name

    def w(name, *shape):
        return const(name, (rng.standard_normal(shape) * 0.3).astype(np.float32))

    f32 = np.float32
    n = [
        Node("Conv", "conv1", ["x", w("w1", 8, 3, 3, 3), w("b1", 8)], ["c1"],
             dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])),
        Node("Relu", "relu1", ["c1"], ["r1"]),
        Node("Conv", "dw2", ["r1", w("w2", 8, 1, 3, 3), w("b2", 8)], ["c2"],
             dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2], group=8)),
        Node("Clip", "relu6_2", ["c2", const("lo", f32(0)), const("hi", f32(6))], ["r2"]),
        Node("Conv", "pw3", ["r2", w("w3", 8, 8, 1, 1), w("b3", 8)], ["c3"], {}),
        Node("LeakyRelu", "leaky3", ["c3"], ["l3"], dict(alpha=0.1)),
        Node("Add", "add4", ["l3", "r2"], ["a4"]),
        Node("MaxPool", "max5", ["a4"], ["m5"], dict(kernel_shape=[2, 2], strides=[2, 2])),
        Node("AveragePool", "avg6", ["a4"], ["p6"], dict(kernel_shape=[2, 2], strides=[2, 2])),
        Node("Concat", "cat7", ["m5", "p6"], ["k7"], dict(axis=1)),
        Node("BatchNormalization", "bn8", ["k7", w("g8", 16), w("be8", 16), w("mu8", 16),
                                           const("var8", rng.random(16, dtype=f32) + 0.5)],
             ["n8"], dict(epsilon=1e-5)),
        Node("Sigmoid", "sig9", ["n8"], ["s9"]),
        Node("Mul", "mul10", ["n8", "s9"], ["u10"]),
        Node("HardSwish", "hs11", ["u10"], ["h11"]),
        Node("ConvTranspose", "up12", ["h11", w("w12", 16, 4, 2, 2), w("b12", 4)], ["d12"],
             dict(kernel_shape=[2, 2], strides=[2, 2])),
        Node("Tanh", "tanh13", ["d12"], ["t13"]),
        Node("Resize", "rs14", ["t13", "", const("sc14", np.array([1, 1, 2, 2], f32))], ["z14"],
             dict(mode="nearest", coordinate_transformation_mode="asymmetric",
                  nearest_mode="floor")),
        Node("Pad", "pad15", ["z14", const("pads15", np.array([0, 0, 1, 1, 0, 0, 1, 1])),
                              const("v15", f32(0))], ["q15"], dict(mode="constant")),
        Node("Slice", "slice16", ["q15", const("st16", np.array([1])),
                                  const("en16", np.array([17])), const("ax16", np.array([2]))],
             ["e16"]),
        Node("Split", "split17", ["e16", const("sp17", np.array([2, 2]))], ["sa", "sb"],
             dict(axis=1)),
        Node("Sub", "sub18", ["sa", "sb"], ["o18"]),
        Node("Mish", "mish19", ["o18"], ["i19"]),
        Node("Transpose", "tr20", ["i19"], ["tr20"], dict(perm=[0, 1, 3, 2])),
        Node("Reshape", "resh21", ["tr20", const("shape21", np.array([1, 2, -1]))], ["rs21"]),
        Node("Softmax", "soft22", ["rs21"], ["prob"], dict(axis=2)),
        Node("GlobalAveragePool", "gap23", ["h11"], ["g23"]),
        Node("Flatten", "flat24", ["g23"], ["f24"], dict(axis=1)),
        Node("Gemm", "fc25", ["f24", w("w25", 10, 16), w("b25", 10)], ["logits"], dict(transB=1)),
    ]
    g = Graph("synthetic", [TensorInfo("x", "float32", (1, 3, 16, 16))],
              [TensorInfo("logits", "float32", (1, 10)), TensorInfo("prob", "float32", None)],
              n, c, opset=18)
    return g.toposort().validate().infer_shapes()


def run(graph, x):
    return make_session(graph, threads=1).run(None, {graph.inputs[0].name: x})


def calibrated_table(graph, unsigned=False):
    """Activations from the observed ranges of a few random inputs, per-channel weights."""
    inputs = {n.inputs[0] for n in graph.nodes if n.op in WEIGHTED}
    names = sorted(inputs - {"x"})
    session = make_session(graph, extra_outputs=names, threads=1)
    rng = np.random.default_rng(3)
    lo, hi = {}, {}
    for _ in range(4):
        x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
        values = dict(zip(names, session.run(names, {"x": x})), x=x)
        for k in inputs:
            lo[k] = min(lo.get(k, 0.0), float(values[k].min()))
            hi[k] = max(hi.get(k, 0.0), float(values[k].max()))
    spec = QuantSpec(signed=not unsigned, symmetric=not unsigned)
    table = QuantTable(meta={"method": "test"})
    for k in inputs:
        table.activations[k] = act_from_range(lo[k], hi[k], spec)
    for node in graph.nodes:
        if node.op in WEIGHTED:
            w = graph.constants[node.inputs[1]]
            axis = 1 if node.op == "ConvTranspose" else 0
            absmax = np.abs(np.moveaxis(w, axis, 0)).reshape(w.shape[axis], -1).max(1)
            table.weights[node.inputs[1]] = WeightQuant((absmax / 127).astype(np.float32), axis)
            table.precision[node.name] = INT8
    return table


@pytest.fixture(scope="module")
def prepared():
    """The synthetic graph as the host hands it to a writer, and its int8 table."""
    graph = canonicalize(synthetic_graph())
    return graph, calibrated_table(graph)


# ---- an independent minimal parser (tmfile.md §1-§10), not the reader under test ------------

def walk(data):
    """Every object of a tmfile with its offset, parsed with nothing but ``struct``."""
    u32 = lambda off: struct.unpack_from("<I", data, off)[0]  # noqa: E731

    def vec(off, item="I"):
        n = u32(off)
        return list(struct.unpack_from("<" + item * n, data, off + 4))

    def string(off):
        size, at = struct.unpack_from("<II", data, off)
        assert size >= 1 and data[at + size - 1] == 0, "strings end with NUL, size counts it"
        assert 0 <= off - (at + size) < 4, "characters sit right before the TM2_String"
        return data[at:at + size - 1].decode(), at

    f = {"header": struct.unpack_from("<HHHHI", data, 0)}
    root = f["header"][4]
    f["root"] = root
    f["model"] = struct.unpack_from("<iiII", data, root)
    f["sg_vector"] = f["model"][2]
    (sg,) = vec(f["sg_vector"])
    f["sg"] = sg
    f["subgraph"] = struct.unpack_from("<IiiIIIIIII", data, sg)
    _, _, _, vi_in, vi_out, vo_nodes, vo_tensors, vo_buffers, _, _ = f["subgraph"]
    f["inputs"], f["outputs"] = vec(vi_in), vec(vi_out)
    f["vectors"] = dict(nodes=vo_nodes, tensors=vo_tensors, buffers=vo_buffers, inputs=vi_in,
                        outputs=vi_out)
    f["nodes"] = []
    for at in vec(vo_nodes):
        nid, vin, vout, op, s_name, attrs, dyn = struct.unpack_from("<IIIIIIB", data, at)
        ver, op_type, param = struct.unpack_from("<III", data, op)
        name, name_at = string(s_name)
        f["nodes"].append(dict(at=at, id=nid, vin=vin, vout=vout, op_at=op, name=name,
                               name_at=name_at, s_name=s_name, attrs=attrs, dyn=dyn,
                               pad=data[at + 25:at + 28], ver=ver, type=op_type, param=param,
                               inputs=vec(vin) if vin else [], outputs=vec(vout)))
    f["tensors"] = []
    for at in vec(vo_tensors):
        tid, bid, vd, s_name, vq, layout, ttype, dtype = struct.unpack_from("<IIIIIiii", data, at)
        name, name_at = string(s_name)
        quant = [(q, struct.unpack_from("<ifi", data, q)) for q in vec(vq)] if vq else []
        f["tensors"].append(dict(at=at, id=tid, buffer=bid, dims_at=vd, dims=vec(vd, "i") if vd
                                 else None, name=name, name_at=name_at, s_name=s_name, q_at=vq,
                                 quant=quant, layout=layout, type=ttype, dtype=dtype))
    f["buffers"] = [(at,) + struct.unpack_from("<II", data, at) for at in vec(vo_buffers)]
    return f


PARAM_SIZE = {5: 56, 6: 60, 9: 20, 10: 8, 11: 4, 16: 44, 20: 4, 23: 16, 28: 4, 3: 4, 29: 16,
              27: 40, 40: 40, 70: 8, 71: 20, 77: 4, 1: 12, 87: 8}
ELEM = {0: 4, 1: 2, 2: 1, 3: 1, 4: 4, 5: 2}


def check_structure(data):
    """Field-by-field checks of tmfile.md that hold for every file ptqconv writes."""
    f = walk(data)
    ver_main, ver_sub, ver_compile, pad, root = f["header"]
    assert (ver_main, ver_sub, ver_compile, pad) == (2, 0, 0, 0)
    assert root % 4 == 0 and root + 16 == len(data)
    orig, sub, _, s_mname = f["model"]
    assert (orig, sub, s_mname) == (1, 0, 0)
    sid, glayout, mlayout = f["subgraph"][:3]
    assert (sid, glayout, mlayout, f["subgraph"][8], f["subgraph"][9]) == (0, 0, 0, 0, 0)
    nodes, tensors = f["nodes"], f["tensors"]
    for k, n in enumerate(nodes):
        assert n["id"] == k and n["attrs"] == 0 and n["dyn"] == 0 and n["pad"] == b"\0\0\0"
        assert n["ver"] == 1 and all(v % 4 == 0 for v in (n["at"], n["vout"], n["op_at"],
                                                          n["s_name"]))
        assert (n["vin"] == 0) == (not n["inputs"])
        order = [n["name_at"], n["s_name"]] + ([n["vin"]] if n["vin"] else []) + [n["vout"]] + \
            ([n["param"]] if n["param"] else []) + [n["op_at"], n["at"]]
        assert order == sorted(order), "name < inputs < outputs < param < operator < node"
        if n["param"]:
            assert n["op_at"] - n["param"] == PARAM_SIZE[n["type"]]
        if n["type"] in (4, 12):  # Const, InputOp
            assert not n["inputs"] and len(n["outputs"]) == 1 and n["param"] == 0
            assert tensors[n["outputs"][0]]["type"] == (2 if n["type"] == 4 else 3)
    assert f["inputs"] == [k for k, n in enumerate(nodes) if n["type"] == 12]
    produced = [t for n in nodes for t in n["outputs"]]
    assert produced == list(range(len(tensors))), "tensors are numbered by their producer"
    consts = [t for t in tensors if t["type"] == 2]
    for k, t in enumerate(tensors):
        assert t["id"] == k and t["layout"] == 0 and t["at"] % 4 == 0
        order = [t["name_at"], t["s_name"]] + ([t["dims_at"]] if t["dims_at"] else []) + \
            [q for q, _ in t["quant"]] + ([t["q_at"]] if t["q_at"] else []) + [t["at"]]
        assert order == sorted(order), "name < dims < quant params < quant vector < tensor"
    for k, t in enumerate(consts):
        assert t["buffer"] == k
        at, size, data_at = f["buffers"][k]
        assert size == math.prod(t["dims"]) * ELEM[t["dtype"]]
        assert 0 <= at - (data_at + size) < 4, "buffer data ends right before its TM2_Buffer"
    last = lambda items: max(items)  # noqa: E731
    v = f["vectors"]
    chain = [last(n["at"] for n in nodes), v["nodes"], last(t["at"] for t in tensors),
             v["tensors"]] + ([last(b[0] for b in f["buffers"])] if consts else []) + \
        [v["buffers"], v["inputs"], v["outputs"], f["sg"], f["sg_vector"], root]
    assert chain == sorted(chain), "nodes < tensors < buffers < I/O < subgraph < model"
    return f


# ---- round trips -----------------------------------------------------------------------------

def assert_same_graph(a, b):
    assert [(n.op, n.name, n.inputs, n.outputs, repr(n.attrs)) for n in a.nodes] == \
        [(n.op, n.name, n.inputs, n.outputs, repr(n.attrs)) for n in b.nodes]
    assert a.inputs == b.inputs and a.outputs == b.outputs and a.value_info == b.value_info
    assert sorted(a.constants) == sorted(b.constants)
    for k, v in a.constants.items():
        assert v.dtype == b.constants[k].dtype and np.array_equal(v, b.constants[k]), k


def assert_same_table(a, b):
    if a is None or b is None:
        assert a is b
        return
    assert a.activations == b.activations and a.precision == b.precision and a.meta == b.meta
    assert sorted(a.weights) == sorted(b.weights)
    for k, wq in a.weights.items():
        assert wq.axis == b.weights[k].axis and np.array_equal(wq.scales, b.weights[k].scales)


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_golden_read_write_read_is_identical(name):
    first = read_tmfile([str(shared_path("golden", "tengine", name))])
    written = tmfile_bytes(first.graph, first.table)
    second = read_bytes(written)
    assert_same_graph(first.graph, second.graph)
    assert_same_table(first.table, second.table)
    assert tmfile_bytes(second.graph, second.table) == written  # ptqconv's files: same bytes
    check_structure(written)


def test_synthetic_fp32_matches_onnxruntime(prepared, tmp_path):
    graph, _ = prepared
    path = tmp_path / "s.tmfile"
    write_tmfile(fuse_activation(graph.copy()), None, [str(path)])
    back = read_tmfile([str(path)]).graph
    x = np.random.default_rng(5).standard_normal((1, 3, 16, 16)).astype(np.float32)
    for a, b in zip(run(synthetic_graph(), x), run(back, x)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    again = tmfile_bytes(back)
    assert again == path.read_bytes()
    f = check_structure(again)
    conv = next(n for n in f["nodes"] if n["name"] == "dw2")
    p = struct.unpack_from("<14i", again, conv["param"])
    assert p == (3, 3, 2, 2, 1, 1, 8, 8, 8, 6, 1, 1, 1, 1)  # depthwise, ReLU6 fused
    types = {n["name"]: n["type"] for n in f["nodes"]}
    # LeakyReLU has no Conv activation code: it is its own ReLU node, named by the __act rule.
    assert (types["conv1"], types["pw3"], types["pw3__act"], types["fc25"], types["rs14"],
            types["tr20"]) == (5, 5, 20, 11, 71, 77)
    leaky = next(n for n in f["nodes"] if n["name"] == "pw3__act")
    assert struct.unpack_from("<f", again, leaky["param"])[0] == np.float32(0.1)


def test_int8_layout_and_qdq_equivalence(prepared, tmp_path):
    graph, table = prepared
    path = tmp_path / "s8.tmfile"
    write_tmfile(fuse_activation(graph.copy()), table, [str(path)])
    data = path.read_bytes()
    f = check_structure(data)
    tensors = {t["name"]: t for t in f["tensors"]}
    for name, aq in table.activations.items():  # per-tensor int8 activations, zero point 0
        t = tensors[name]
        assert t["dtype"] == 2 and [q for _, q in t["quant"]] == [(0, np.float32(aq.scale), 8)]
    for node in graph.nodes:
        if node.op not in WEIGHTED:
            continue
        w_t, b_t = tensors[node.inputs[1]], tensors[node.inputs[2]]
        in_scale = np.float32(table.activations[node.inputs[0]].scale)
        codes = np.frombuffer(data, np.int8, math.prod(w_t["dims"]), f["buffers"][w_t["buffer"]][2])
        scales = np.array([q[1] for _, q in w_t["quant"]], np.float32)
        assert w_t["dtype"] == 2 and b_t["dtype"] == 4
        per_channel = codes.reshape(w_t["dims"][0], -1)
        if node.op == "ConvTranspose":  # one step for the whole weight
            assert len(scales) == 1 and np.abs(codes).max() == 127
        else:
            assert len(scales) == w_t["dims"][0]
            np.testing.assert_array_equal(np.abs(per_channel).max(1), 127)
        bias_scales = np.array([q[1] for _, q in b_t["quant"]], np.float32)
        np.testing.assert_array_equal(bias_scales, (in_scale * scales).astype(np.float32))
        b = graph.constants[node.inputs[2]].astype(np.float64)
        b_codes = np.frombuffer(data, "<i4", b.size, f["buffers"][b_t["buffer"]][2])
        np.testing.assert_array_equal(b_codes, round_half_away(b / np.broadcast_to(
            bias_scales.astype(np.float64), b.shape)))
    # Other constants keep their type with one {0, 0} param, as quant_tool writes them.
    assert (tensors["shape21"]["dtype"], tensors["sc14"]["dtype"]) == (4, 0)
    assert [q for _, q in tensors["sc14"]["quant"]] == [(0, 0.0, 32)]
    back = read_tmfile([str(path)])
    for name, aq in table.activations.items():
        got = back.table.activations[name]
        assert (np.float32(got.scale), got.zero_point, got.signed) == \
            (np.float32(aq.scale), 0, True)
    for name, wq in table.weights.items():
        if wq.axis == 0:
            np.testing.assert_array_equal(back.table.weights[name].scales, wq.scales)
    assert {k for k, v in back.table.precision.items() if v == INT8} == set(table.precision)
    assert tmfile_bytes(back.graph, back.table) == data
    x = np.random.default_rng(9).standard_normal((1, 3, 16, 16)).astype(np.float32)
    direct = run(insert_qdq(graph, table), x)[0]
    via_tm = run(insert_qdq(back.graph, back.table), x)[0]
    np.testing.assert_allclose(via_tm, direct, atol=2e-3 * np.abs(direct).max())


def test_uint8_layout(tmp_path):
    graph = canonicalize(synthetic_graph())
    table = calibrated_table(graph, unsigned=True)
    path = tmp_path / "s_u8.tmfile"
    write_tmfile(fuse_activation(graph.copy()), table, [str(path)])
    data = path.read_bytes()
    tensors = {t["name"]: t for t in check_structure(data)["tensors"]}
    for name, aq in table.activations.items():
        t = tensors[name]
        assert t["dtype"] == 3 and [q for _, q in t["quant"]] == \
            [(aq.zero_point, np.float32(aq.scale), 8)]
    conv = next(n for n in graph.nodes if n.name == "conv1")
    w_t, b_t = tensors[conv.inputs[1]], tensors[conv.inputs[2]]
    (_, (zp, scale, _)), = w_t["quant"]
    w = graph.constants[conv.inputs[1]]
    assert w_t["dtype"] == 3 and np.float32(scale) == np.float32((w.max() - w.min()) / 255)
    assert zp == int(-w.min() / np.float32(scale))
    in_scale = np.float32(table.activations[conv.inputs[0]].scale)
    assert b_t["dtype"] == 4 and b_t["quant"][0][1][1] == np.float32(in_scale * np.float32(scale))
    back = read_tmfile([str(path)])
    for name, aq in table.activations.items():
        got = back.table.activations[name]
        assert (np.float32(got.scale), got.zero_point, got.signed) == \
            (np.float32(aq.scale), aq.zero_point, False)
    assert tmfile_bytes(back.graph, back.table) == data
    x = np.random.default_rng(2).standard_normal((1, 3, 16, 16)).astype(np.float32)
    a, b = run(graph, x)[0], run(insert_qdq(back.graph, back.table), x)[0]
    assert (a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b) > 0.98


def test_scale_table_round_trip(prepared, tmp_path):
    graph, table = prepared
    path = tmp_path / "table_kl.scale"
    write_scale_table(table, graph, str(path))
    lines = path.read_text().splitlines()
    assert lines and all(re.fullmatch(r"\S+ \d+\.\d{6} 0", ln) for ln in lines)
    names = [ln.split()[0] for ln in lines]
    assert names[0] == "x" and set(table.activations) <= set(names)
    loaded = read_scale_table(str(path), graph)
    for name, aq in table.activations.items():
        assert loaded.activations[name].scale == pytest.approx(aq.scale, abs=5e-7)
        assert loaded.activations[name].signed
    assert set(loaded.precision) == set(table.precision)
    for name, wq in loaded.weights.items():
        np.testing.assert_allclose(wq.scales, table.weights[name].scales, rtol=1e-6)
