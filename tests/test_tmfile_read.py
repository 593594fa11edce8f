"""Reading Tengine's golden tmfiles: structure, onnxruntime runs, MNIST digits, quant params."""
import struct

import numpy as np
import pytest
from PIL import Image

from conftest import shared_path
from ptqconv.core.runtime import make_session
from ptqconv.formats.tmfile.reader import read_tmfile, sniff_tmfile

GOLDEN = {  # file: (tm nodes that become IR ops, op counts of the IR graph)
    "mnist.tmfile": {"Conv": 3, "Relu": 4, "MaxPool": 1, "Reshape": 1, "Gemm": 2},
    "lenet-int8.tmfile": {"Conv": 2, "MaxPool": 2, "Flatten": 1, "Gemm": 2, "Relu": 1,
                          "Softmax": 1},
    "resnet18-cifar10-nosoftmax.tmfile": {"Conv": 19, "Relu": 17, "Add": 8,
                                          "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1},
    "resnet18-cifar10-nosoftmax_int8.tmfile": {"Conv": 19, "Relu": 17, "Add": 8,
                                               "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1},
    "resnet18-cifar10-nosoftmax-relu_int8.tmfile": {"Conv": 19, "Relu": 17, "Add": 8,
                                                    "GlobalAveragePool": 1, "Flatten": 1,
                                                    "Gemm": 1},
    "yolox_nano_relu.tmfile": {"Conv": 113, "Relu": 104, "Add": 7, "Concat": 17, "MaxPool": 3,
                               "Resize": 2, "Sigmoid": 6, "Reshape": 3, "Transpose": 1},
    "yolox_nano_relu_s_wf_int8.tmfile": {"Conv": 113, "Relu": 104, "Add": 7, "Concat": 17,
                                         "MaxPool": 3, "Resize": 2, "Sigmoid": 6, "Reshape": 3,
                                         "Transpose": 1},
}
OUTPUT_SHAPES = {"mnist.tmfile": (1, 10), "lenet-int8.tmfile": (1, 10),
                 "resnet18-cifar10-nosoftmax.tmfile": (1, 10),
                 "yolox_nano_relu.tmfile": (1, 3549, 85)}


def golden(name):
    return str(shared_path("golden", "tengine", name))


def random_feed(graph, seed=0):
    rng = np.random.default_rng(seed)
    return {t.name: rng.random([d or 1 for d in t.shape], dtype=np.float32) for t in graph.inputs}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_every_golden_reads(name):
    path = golden(name)
    assert sniff_tmfile(path)
    loaded = read_tmfile([path])
    assert loaded.graph.op_counts() == GOLDEN[name]
    loaded.graph.validate()
    assert (loaded.table is not None) == ("int8" in name)


@pytest.mark.parametrize("name", sorted(OUTPUT_SHAPES))
def test_golden_runs_in_onnxruntime(name):
    graph = read_tmfile([golden(name)]).graph
    outputs = make_session(graph, threads=1).run(None, random_feed(graph))
    assert outputs[0].shape == OUTPUT_SHAPES[name]
    assert np.all(np.isfinite(outputs[0]))


@pytest.mark.parametrize("fp32, int8", [
    ("resnet18-cifar10-nosoftmax.tmfile", "resnet18-cifar10-nosoftmax_int8.tmfile"),
    ("resnet18-cifar10-nosoftmax.tmfile", "resnet18-cifar10-nosoftmax-relu_int8.tmfile")])
def test_dequantized_int8_golden_matches_its_fp32_model(fp32, int8):
    """The int8 file's weights, dequantized, give nearly the fp32 model's logits."""
    g32, g8 = read_tmfile([golden(fp32)]).graph, read_tmfile([golden(int8)]).graph
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 1, 3, 32, 32)).astype(np.float32)
    s32, s8 = make_session(g32, threads=1), make_session(g8, threads=1)
    a = np.concatenate([s32.run(None, {"data": xi})[0] for xi in x])
    b = np.concatenate([s8.run(None, {"data": xi})[0] for xi in x])
    cos = (a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b)
    assert cos > 0.99
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.75


def mnist_digits():
    folder = shared_path("images", "mnist-sample")
    rows = [ln.split("\t") for ln in (folder / "labels.txt").read_text().splitlines() if ln.strip()]
    x = np.stack([np.asarray(Image.open(folder / f).convert("L"), np.float32) for f, _ in rows])
    return x, np.array([int(label) for _, label in rows])


def accuracy(graph, x):
    session = make_session(graph, threads=1)
    name = graph.inputs[0].name
    return np.array([session.run(None, {name: xi[None, None]})[0].argmax() for xi in x])


def test_mnist_golden_classifies_handwritten_digits():
    """mnist.tmfile expects torchvision's MNIST normalization (pixel/255 - 0.1307) / 0.3081:
    near-perfect there, clearly worse on plain pixel/255."""
    x, y = mnist_digits()
    graph = read_tmfile([golden("mnist.tmfile")]).graph
    normalized = (accuracy(graph, (x / 255 - 0.1307) / 0.3081) == y).mean()
    plain = (accuracy(graph, x / 255) == y).mean()
    assert normalized >= 0.98, normalized
    assert plain < 0.9 < normalized


def test_lenet_int8_golden_classifies_digits():
    """The Caffe LeNet (pixel/255 input) still works after dequantizing its int8 weights."""
    x, y = mnist_digits()
    graph = read_tmfile([golden("lenet-int8.tmfile")]).graph
    assert (accuracy(graph, x[:100] / 255) == y[:100]).mean() >= 0.95


# ---- quantization parameters, checked against the raw bytes ---------------------------------

def raw_quant_params(path):
    """{tensor name: (tensor type, data type, [(zero_point, scale)])} read straight from the
    bytes with the layout of tmfile.md §2-§7 (independent of the reader under test)."""
    data = open(path, "rb").read()
    u32 = lambda off: struct.unpack_from("<I", data, off)[0]  # noqa: E731
    vec = lambda off: [u32(off + 4 + 4 * k) for k in range(u32(off))]  # noqa: E731
    root = u32(8)
    sg = vec(u32(root + 8))[0]
    result = {}
    for t in vec(u32(sg + 24)):
        _, _, _, s_name, vo_q, _, ttype, dtype = struct.unpack_from("<IIIIIiii", data, t)
        size, at = struct.unpack_from("<II", data, s_name)
        name = data[at:at + size - 1].decode()
        params = [struct.unpack_from("<if", data, q) for q in vec(vo_q)] if vo_q else []
        result[name] = (ttype, dtype, [(zp, np.float32(s)) for zp, s in params])
    return result


@pytest.mark.parametrize("name", ["lenet-int8.tmfile", "resnet18-cifar10-nosoftmax_int8.tmfile",
                                  "yolox_nano_relu_s_wf_int8.tmfile"])
def test_int8_golden_quant_params_come_back_exactly(name):
    path = golden(name)
    raw = raw_quant_params(path)
    table = read_tmfile([path]).table
    acts = {k: v for k, v in raw.items() if v[0] in (1, 3)}
    assert acts and all(v[1] == 2 and len(v[2]) == 1 for v in acts.values())
    for tensor, (_, _, params) in acts.items():
        aq = table.activations[tensor]
        assert (aq.zero_point, np.float32(aq.scale), aq.signed) == \
            (params[0][0], params[0][1], True)
    assert table.weights
    for weight, wq in table.weights.items():
        ttype, dtype, params = raw[weight]
        assert (ttype, dtype) == (2, 2)
        assert np.array_equal(wq.scales, np.array([s for _, s in params], np.float32))
    bias = table.meta["tmfile"]["bias"]
    for tensor, params in bias.items():
        assert [(z, np.float32(s)) for s, z in params] == raw[tensor][2]


# ---- reader ops the goldens do not use, against numpy references ----------------------------

def hand_made_model():
    """A tm2 model built field by field: input x[1,2,4,4] through ops absent from the goldens."""
    from ptqconv.formats.tmfile import schema as S
    from ptqconv.formats.tmfile.container import TmModel, TmNode, TmTensor

    tensors, nodes = [], []

    def tensor(name, kind=S.T_VAR, value=None, dims=None):
        data = None if value is None else np.ascontiguousarray(value, "<f4").tobytes()
        tensors.append(TmTensor(name, kind, S.FP32, list(value.shape) if value is not None
                                else dims, [], data))
        return len(tensors) - 1

    def node(op, params, inputs, outputs):
        nodes.append(TmNode(f"n{len(nodes)}_{op}", op, params, inputs, outputs))

    f32 = np.float32
    x = tensor("x", S.T_INPUT, dims=[1, 2, 4, 4])
    node("InputOp", None, [], [x])
    gamma = tensor("gamma", S.T_CONST, np.array([2, -1], f32))
    node("Const", None, [], [gamma])
    beta = tensor("beta", S.T_CONST, np.array([0.5, 1], f32))
    node("Const", None, [], [beta])
    slope = tensor("slope", S.T_CONST, np.array([0.1, 0.2], f32))
    node("Const", None, [], [slope])
    stats = [tensor(n, S.T_CONST, np.array(v, f32)) for n, v in
             (("g", [1, 2]), ("b", [0, 1]), ("mean", [2, 4]), ("var", [8, 2]))]
    for k in stats:
        node("Const", None, [], [k])
    outs = {}

    def op(name, tm_op, params, inputs, n_out=1):
        ids = [tensor(f"{name}_{k}" if n_out > 1 else name) for k in range(n_out)]
        node(tm_op, params, inputs, ids)
        outs[name] = ids
        return ids[0]

    op("permute", "Permute", dict(flag=0, order0=0, order1=2, order2=3, order3=1), [x])
    op("upsample", "Upsample", dict(scale=2.0), [x])
    op("scale", "Scale", dict(axis=1, num_axes=1, bias_term=1), [x, gamma, beta])
    op("copy", "Split", dict(axis=0, split_dim=0, is_caffe=1, is_onnx=0, split_sizes=None), [x], 2)
    op("slices", "Slice", dict(axis=1, slice_points=[1], begins=None, sizes=None, iscaffe=1,
                               ismxnet=0, isonnx=0, begin=0, end=0, step=1), [x], 2)
    op("drop", "Dropout", None, [x])
    op("relu6", "ReLU6", None, [x])
    op("prelu", "PReLU", None, [x, slope])
    op("bn", "BatchNormalization", dict(rescale_factor=2.0, eps=0.0, caffe_flavor=1),
       [x] + stats)
    op("max", "Eltwise", dict(type=6, caffe_flavor=0), [x, outs["relu6"][0]])
    op("prod", "Eltwise", dict(type=0, caffe_flavor=0), [x, outs["drop"][0]])
    outputs = [k for k, n in enumerate(nodes) if n.op not in ("Const", "InputOp")]
    return TmModel(nodes, tensors, [1], outputs)


def test_reader_ops_against_numpy():
    from ptqconv.formats.tmfile.container import parse_tmfile, serialize_tmfile
    from ptqconv.formats.tmfile.reader import convert_model

    data = serialize_tmfile(hand_made_model())
    graph = convert_model(parse_tmfile(data, "hand.tmfile"), "hand.tmfile").graph
    x = np.random.default_rng(4).standard_normal((1, 2, 4, 4)).astype(np.float32) * 4
    got = dict(zip(graph.output_names(), make_session(graph, threads=1).run(None, {"x": x})))
    c = lambda v: np.array(v, np.float32).reshape(1, -1, 1, 1)  # noqa: E731
    relu6 = np.clip(x, 0, 6)
    expected = {
        "permute": x.transpose(0, 2, 3, 1),
        "upsample": x.repeat(2, axis=2).repeat(2, axis=3),
        "scale": x * c([2, -1]) + c([0.5, 1]),
        "copy_0": x, "copy_1": x, "slices_0": x[:, :1], "slices_1": x[:, 1:],
        "drop": x, "relu6": relu6,
        "prelu": np.where(x > 0, x, x * c([0.1, 0.2])),
        # Caffe BatchNorm stores mean and variance times the moving-average factor (2 here)
        "bn": (x - c([1, 2])) / np.sqrt(c([4, 1])) * c([1, 2]) + c([0, 1]),
        "max": np.maximum(x, relu6), "prod": x * x,
    }
    assert sorted(got) == sorted(expected)
    for name, want in expected.items():
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-5, err_msg=name)
