"""Per-layer checks of the ncnn reader and writer against the real ncnn runtime.

Each case is a tiny hand-written ncnn model (a few layers after the Input) with random weights.
The ncnn pip package runs it; the reader's IR runs on onnxruntime; the outputs must agree. The IR
is then written back by ptqconv's ncnn writer and run by ncnn again: same outputs.
"""
import numpy as np
import pytest

from ptqconv.core.passes import canonicalize, fuse_activation
from ptqconv.core.runtime import make_session
from ptqconv.formats.ncnn.reader import read_ncnn
from ptqconv.formats.ncnn.weights import BinWriter
from ptqconv.formats.ncnn.writer import write_ncnn

ncnn = pytest.importorskip("ncnn")

from ptqconv.formats.ncnn.runtime import ncnn_runtime  # noqa: E402

IN3 = "Input in0 0 1 in0 0=6 1=5 2=4"          # c=4, h=5, w=6
IN3B = "Input in1 0 1 in1 0=6 1=5 2=4"
IN2 = "Input in0 0 1 in0 0=6 1=5"                # h=5, w=6
IN4D = "Input in0 0 1 in0 0=6 1=5 11=3 2=4"    # c=4, d=3, h=5, w=6


def conv_w(out_c, in_c, k, bias=True, fp16=False):
    def make(rng, b):
        b.tagged_float(rng.standard_normal(out_c * in_c * k * k).astype(np.float32) * 0.3, fp16)
        if bias:
            b.raw(rng.standard_normal(out_c).astype(np.float32))
    return make


def raw(*sizes):
    def make(rng, b):
        for n in sizes:
            b.raw(rng.uniform(0.5, 1.5, n).astype(np.float32))
    return make


def chain(*makers):
    def make(rng, b):
        for m in makers:
            m(rng, b)
    return make


# (case id, layer lines after the Input, weight maker or None, extra inputs)
CASES = [
    ("conv_relu", ["Convolution c 1 1 in0 out 0=8 1=3 4=1 5=1 6=288 9=1"], conv_w(8, 4, 3), ()),
    ("conv_s2_d2_asym", ["Convolution c 1 1 in0 out 0=3 1=3 2=2 3=2 4=1 15=0 14=2 16=1 5=1 6=108"],
     conv_w(3, 4, 3), ()),
    ("conv_same_leaky", ["Convolution c 1 1 in0 out 0=5 1=3 3=2 4=-233 15=-233 14=-233 16=-233 "
                         "5=0 6=180 9=2 -23310=1,1.000000e-01"], conv_w(5, 4, 3, bias=False), ()),
    ("conv_clip_fp16", ["Convolution c 1 1 in0 out 0=4 1=1 5=1 6=16 9=3 -23310=2,-0.5,0.5"],
     conv_w(4, 4, 1, fp16=True), ()),
    ("conv_padvalue_sigmoid", ["Convolution c 1 1 in0 out 0=2 1=3 4=1 18=2.5 5=1 6=72 9=4"],
     conv_w(2, 4, 3), ()),
    ("conv_mish", ["Convolution c 1 1 in0 out 0=2 1=1 5=1 6=8 9=5"], conv_w(2, 4, 1), ()),
    ("conv_hswish", ["Convolution c 1 1 in0 out 0=2 1=1 5=1 6=8 9=6 "
                     "-23310=2,1.666667e-01,5.000000e-01"], conv_w(2, 4, 1), ()),
    ("convdw", ["ConvolutionDepthWise c 1 1 in0 out 0=4 1=3 4=1 5=1 6=36 7=4 9=1"],
     conv_w(4, 1, 3), ()),
    ("convgroup", ["ConvolutionDepthWise c 1 1 in0 out 0=6 1=3 3=2 5=1 6=108 7=2"],
     conv_w(6, 2, 3), ()),
    ("deconv", ["Deconvolution d 1 1 in0 out 0=3 1=3 3=2 4=1 18=1 5=1 6=108"],
     conv_w(3, 4, 3), ()),
    ("deconvdw", ["DeconvolutionDepthWise d 1 1 in0 out 0=4 1=2 3=2 5=1 6=32 7=2"],
     conv_w(4, 2, 2), ()),
    ("fc3d", ["InnerProduct fc 1 1 in0 out 0=7 1=1 2=840 9=1"], conv_w(7, 120, 1), ()),
    ("fc_after_gap", ["Pooling gap 1 1 in0 p 0=1 4=1", "InnerProduct fc 1 1 p out 0=3 1=0 2=12"],
     conv_w(3, 4, 1, bias=False), ()),
    ("fc_rows", ["InnerProduct fc 1 1 in0 out 0=3 1=1 2=18 9=1"], conv_w(3, 6, 1), ()),
    ("maxpool_full", ["Pooling p 1 1 in0 out 0=0 1=3 2=2"], None, ()),
    ("maxpool_valid_pad", ["Pooling p 1 1 in0 out 0=0 1=2 2=2 3=1 5=1"], None, ()),
    ("avgpool_full_pad", ["Pooling p 1 1 in0 out 0=1 1=3 2=2 3=1 5=0"], None, ()),
    ("avgpool_incl_pad", ["Pooling p 1 1 in0 out 0=1 1=3 2=1 3=1 5=1 6=1"], None, ()),
    ("avgpool_same", ["Pooling p 1 1 in0 out 0=1 1=3 2=2 5=2"], None, ()),
    ("gmaxpool", ["Pooling p 1 1 in0 out 0=0 4=1"], None, ()),
    ("adaptive1", ["Pooling p 1 1 in0 out 0=1 7=1 8=1"], None, ()),
    ("relu_leaky", ["ReLU r 1 1 in0 out 0=2.000000e-01"], None, ()),
    ("clip", ["Clip r 1 1 in0 out 0=-1.0 1=0.5"], None, ()),
    ("swish_tanh", ["Swish s 1 1 in0 t", "TanH th 1 1 t out"], None, ()),
    ("hsig_hswish", ["HardSigmoid a 1 1 in0 t 0=0.25 1=0.4", "HardSwish b 1 1 t out"], None, ()),
    ("mish_elu_abs", ["Mish m 1 1 in0 t", "ELU e 1 1 t u 0=0.5", "AbsVal a 1 1 u out"], None, ()),
    ("prelu", ["PReLU p 1 1 in0 out 0=4"], raw(4), ()),
    ("batchnorm", ["BatchNorm bn 1 1 in0 out 0=4 1=1.0e-3"], raw(4, 4, 4, 4), ()),
    ("scale_bias", ["Scale s 1 1 in0 t 0=4 1=1", "Bias b 1 1 t out 0=4"], raw(4, 4, 4), ()),
    ("eltwise", ["Split sp 1 3 in0 a b c", "Eltwise e 3 1 a b c out 0=1 -23301=3,1.0,-2.0,0.5"],
     None, ()),
    ("eltwise_prod_max", ["Split sp 1 3 in0 a b c", "Eltwise e 2 1 a b t 0=0",
                          "Eltwise m 2 1 t c out 0=2"], None, ()),
    ("binary_scalar", ["BinaryOp b 1 1 in0 t 0=7 1=1 2=3.0", "BinaryOp c 1 1 t out 0=3 1=1 2=2.0"],
     None, ()),
    ("binary_two", ["BinaryOp b 2 1 in0 in1 out 0=1"], None, (IN3B,)),
    ("binary_rdiv", ["Clip c 1 1 in0 t 0=0.5 1=5.0", "BinaryOp b 1 1 t out 0=8 1=1 2=2.0"], None,
     ()),
    ("binary_perchannel", ["MemoryData md 0 1 m 0=4", "BinaryOp b 2 1 in0 m out 0=2"], raw(4), ()),
    ("binary_bcast3d", ["MemoryData md 0 1 m 0=6 1=1 2=4", "BinaryOp b 2 1 in0 m out 0=0"],
     raw(24), ()),
    ("unary", ["UnaryOp u0 1 1 in0 a 0=0", "UnaryOp u1 1 1 a b 0=5", "UnaryOp u2 1 1 b c 0=6",
               "UnaryOp u3 1 1 c d 0=8", "UnaryOp u4 1 1 d e 0=4", "UnaryOp u5 1 1 e f 0=1",
               "UnaryOp u6 1 1 f g 0=2", "UnaryOp u7 1 1 g h 0=9", "UnaryOp u8 1 1 h out 0=16"],
     None, ()),
    ("concat_axes", ["Split sp 1 4 in0 a b c d", "Concat c0 2 1 a b t 0=0",
                     "Concat c1 2 1 c d u 0=-1", "Reshape r 1 1 t t2 0=6 1=-1 2=4",
                     "Reshape q 1 1 u u2 0=6 1=-1 2=0", "Concat c2 2 1 t2 u2 out 0=1"], None, ()),
    ("slice", ["Slice s 1 3 in0 a b c -23300=3,1,2,-233 1=0", "Concat c 2 1 c a out 0=0"],
     None, ()),
    ("slice_w", ["Slice s 1 2 in0 a b -23302=1,2 1=2", "Concat c 2 1 b a out 0=2"], None, ()),
    ("crop_slice_style", ["Crop c 1 1 in0 out -23309=2,1,1 -23310=2,3,-1 -23311=2,0,2"], None, ()),
    ("crop_offsets", ["Crop c 1 1 in0 out 0=1 1=2 3=3 4=-233 5=2 2=1"], None, ()),
    ("crop_offsets_end", ["Crop c 1 1 in0 out 0=1 1=1 3=-233 4=-233 5=-233 6=2 7=1 8=1"], None,
     ()),
    ("reshape_flatten", ["Reshape r 1 1 in0 t 0=-1", "Reshape q 1 1 t u 0=12 1=10",
                         "Flatten f 1 1 u v", "Reshape z 1 1 v out 0=3 1=2 2=-1"], None, ()),
    ("permute3d", ["Split sp 1 6 in0 a b c d e f"] +
     [f"Permute p{k} 1 1 {x} o{k} 0={k}" for k, x in enumerate("abcdef")] +
     ["Reshape r0 1 1 o0 f0 0=-1", "Reshape r1 1 1 o1 f1 0=-1", "Reshape r2 1 1 o2 f2 0=-1",
      "Reshape r3 1 1 o3 f3 0=-1", "Reshape r4 1 1 o4 f4 0=-1", "Reshape r5 1 1 o5 f5 0=-1",
      "Concat c 6 1 f0 f1 f2 f3 f4 f5 out 0=0"], None, ()),
    ("softmax", ["Softmax s0 1 1 in0 a 0=0 1=1", "Softmax s1 1 1 a b 0=1 1=1",
                 "Softmax s2 1 1 b out 0=2 1=1"], None, ()),
    ("interp_nearest", ["Interp i 1 1 in0 out 0=1 1=2.0 2=2.0"], None, ()),
    ("interp_bilinear", ["Interp i 1 1 in0 out 0=2 3=9 4=13"], None, ()),
    ("interp_bilinear_align", ["Interp i 1 1 in0 out 0=2 3=7 4=11 6=1"], None, ()),
    ("interp_bicubic", ["Interp i 1 1 in0 out 0=3 1=2.0 2=2.0"], None, ()),
    ("padding", ["Padding p 1 1 in0 t 0=1 1=2 2=0 3=1 5=1.5 7=1 8=0",
                 "Padding q 1 1 t u 0=1 1=1 2=2 3=2 4=1", "Padding r 1 1 u out 0=2 2=1 4=2"],
     None, ()),
    ("dropout_noop", ["Dropout d 1 1 in0 t", "Noop n 1 1 t u", "Dropout e 1 1 u out 0=0.5"],
     None, ()),
    ("shufflechannel", ["ShuffleChannel s 1 1 in0 t 0=2", "ShuffleChannel r 1 1 t out 0=2 1=1"],
     None, ()),
]


def _write_model(tmp_path, name, lines, maker, extra_inputs, input_line=None):
    input_line = input_line or (IN2 if name.endswith("_rows") else IN3)
    layers = [input_line] + list(extra_inputs) + lines
    blobs = dict.fromkeys(tok for ln in layers for tok in _blob_names(ln))
    text = f"7767517\n{len(layers)} {len(blobs)}\n" + "\n".join(layers) + "\n"
    param = tmp_path / f"{name}.param"
    binf = tmp_path / f"{name}.bin"
    param.write_text(text)
    w = BinWriter()
    if maker is not None:
        maker(np.random.default_rng(0), w)
    binf.write_bytes(w.getvalue())
    return str(param), str(binf)


def _blob_names(line):
    toks = line.split()
    n_in, n_out = int(toks[2]), int(toks[3])
    return toks[4:4 + n_in + n_out]


def _feeds(graph):
    rng = np.random.default_rng(1)
    return {t.name: rng.uniform(-2, 2, t.shape).astype(np.float32) for t in graph.inputs}


def _compare(a, b, tol=1e-4):
    a, b = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    assert a.shape == b.shape
    err = float(np.abs(a - b).max())
    assert err <= tol * max(1.0, float(np.abs(a).max())), f"max abs diff {err}"


def _rewrite(tmp_path, graph, name):
    """Canonicalize + fuse activations (what the host does) and write with ptqconv's writer."""
    g = fuse_activation(canonicalize(graph.copy()))
    out = [str(tmp_path / f"{name}_w.param"), str(tmp_path / f"{name}_w.bin")]
    write_ncnn(g, None, out, {})
    return out


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_layer_matches_ncnn(tmp_path, case):
    name, lines, maker, extra = case
    paths = _write_model(tmp_path, name, lines, maker, extra)
    graph = read_ncnn(paths).graph
    feeds = _feeds(graph)
    expected = ncnn_runtime(paths)(feeds)
    got = make_session(graph).run(None, feeds)
    assert len(got) == len(expected)
    for e, g in zip(expected, got):
        _compare(e, g)
    rewritten = ncnn_runtime(_rewrite(tmp_path, graph, name))(feeds)
    for e, g in zip(expected, rewritten):
        _compare(e, g)


@pytest.mark.parametrize("order", range(24))
def test_permute_4d_matches_ncnn(tmp_path, order):
    paths = _write_model(tmp_path, f"perm{order}", [f"Permute p 1 1 in0 out 0={order}"], None,
                         (), input_line=IN4D)
    graph = read_ncnn(paths).graph
    feeds = _feeds(graph)
    expected = ncnn_runtime(paths)(feeds)[0]
    _compare(expected, make_session(graph).run(None, feeds)[0])
    _compare(expected, ncnn_runtime(_rewrite(tmp_path, graph, "p"))(feeds)[0])


def _onnx_case(tmp_path, nodes, inits, out_shape, opset=13):
    from onnx import TensorProto, helper, numpy_helper
    import onnx
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)
    graph = helper.make_graph(nodes, "g", [x], [y],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    return path


ONNX_CASES = {
    "se_block": (["ReduceMean:x:m:axes=2,3", "Conv:m,w1,b1:c", "Sigmoid:c:s", "Mul:x,s:y"],
                 {"w1": (4, 4, 1, 1), "b1": (4,)}, [1, 4, 6, 6]),
    "resize_split_concat": (["Resize:x,roi,scales:r", "Split:r:p,q:axis=1", "Concat:q,p:y:axis=1"],
                            {"roi": None, "scales": "1,1,2,2"}, [1, 4, 12, 12]),
    "squeeze_sum_sub": (["GlobalAveragePool:x:g", "Squeeze:g,ax:s", "Unsqueeze:s,ax:u",
                         "Sub:k,u:d", "Sum:d,u,g:y"], {"ax": "2,3", "k": (4, 1, 1)},
                        [1, 4, 1, 1]),
    "div_transpose_pad": (["Div:x,k:d", "Transpose:d:t:perm=0,2,3,1", "Pad:t,pads:y"],
                          {"k": (4, 1, 1), "pads": "0,1,0,2,0,0,1,0"}, [1, 7, 7, 6]),
    "flatten_gemm_t": (["Flatten:x:f:axis=1", "Gemm:f,wt,c:y"], {"wt": (144, 5), "c": (5,)},
                       [1, 5]),
}


def _build(spec, rng):
    from onnx import helper
    nodes, inits = [], {}
    ops, consts, out_shape = spec
    for k, item in enumerate(ops):
        parts = item.split(":")
        op, ins, outs = parts[0], parts[1].split(","), parts[2].split(",")
        attrs = {}
        for a in parts[3:]:
            key, val = a.split("=")
            attrs[key] = [int(v) for v in val.split(",")] if "," in val or key in ("axes",
                                                                                  "perm") \
                else int(val)
        nodes.append(helper.make_node(op, ins, outs, name=f"{op.lower()}_{k}", **attrs))
    for name, v in consts.items():
        if v is None:
            inits[name] = np.zeros(0, np.float32)
        elif isinstance(v, str):
            vals = [float(t) for t in v.split(",")]
            dtype = np.float32 if name == "scales" else np.int64
            inits[name] = np.array(vals, dtype)
        else:
            inits[name] = rng.uniform(0.5, 1.5, v).astype(np.float32)
    return nodes, inits, out_shape


@pytest.mark.parametrize("name", sorted(ONNX_CASES))
def test_onnx_ops_written_for_ncnn(tmp_path, name):
    import ptqconv
    from ptqconv.core.runtime import session_from_model
    import onnx
    nodes, inits, out_shape = _build(ONNX_CASES[name], np.random.default_rng(0))
    path = _onnx_case(tmp_path, nodes, inits, out_shape)
    out = ptqconv.convert({"input": str(path), "to": "ncnn",
                           "output": str(tmp_path / "m.param")}).outputs
    x = np.random.default_rng(1).uniform(-2, 2, (1, 4, 6, 6)).astype(np.float32)
    expected = session_from_model(onnx.load(str(path))).run(None, {"x": x})[0]
    _compare(expected, ncnn_runtime(out)({"x": x})[0])
