"""Small ONNX models and images built in tests (no downloads, no shared data needed)."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def save_model(nodes, inits, inputs, outputs, path, name="model", opset=13):
    """Build, check and save an ONNX model; ``inputs``/``outputs`` are (name, shape) pairs of
    float tensors. Returns the path as a string."""
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def tiny_cnn(path, seed=0, batchnorm=True, opset=13, size=16):
    """Conv(3->8,3x3) [+BN] -> Relu -> Conv dw(8) -> Clip(0,6) -> GlobalAveragePool -> Flatten
    -> Gemm(8->5); input 'input' [1,3,size,size], output 'logits' [1,5]. Returns the path."""
    rng = np.random.default_rng(seed)
    inits = [_init("w1", rng.normal(0, 0.3, (8, 3, 3, 3))), _init("b1", rng.normal(0, 0.1, 8)),
             _init("w2", rng.normal(0, 0.5, (8, 1, 3, 3))), _init("b2", rng.normal(0, 0.1, 8)),
             _init("wfc", rng.normal(0, 0.5, (5, 8))), _init("bfc", rng.normal(0, 0.1, 5)),
             _init("lo", np.float32(0.0)), _init("hi", np.float32(6.0))]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1])]
    src = "c1"
    if batchnorm:
        inits += [_init("bn_s", rng.uniform(0.5, 1.5, 8)), _init("bn_b", rng.normal(0, 0.1, 8)),
                  _init("bn_m", rng.normal(0, 0.1, 8)), _init("bn_v", rng.uniform(0.5, 1.5, 8))]
        nodes.append(helper.make_node("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"],
                                      ["bn1"], name="bn1"))
        src = "bn1"
    nodes += [helper.make_node("Relu", [src], ["r1"], name="relu1"),
              helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", group=8,
                               pads=[1, 1, 1, 1]),
              helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"], name="clip2"),
              helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
              helper.make_node("Gemm", ["flat", "wfc", "bfc"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def write_images(folder, count=8, size=24, seed=0):
    """Write ``count`` random-texture RGB PNGs into ``folder``; returns their paths (sorted)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(count):
        base = rng.integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((size, size), Image.BILINEAR)
        p = folder / f"img_{k:03d}.png"
        img.save(p)
        paths.append(str(p))
    return paths
