"""Malformed tmfiles: one clear error naming the file and offset, no traceback, no output."""
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from ptqconv.core.errors import ModelFormatError, PtqconvError
from ptqconv.core.ir.graph import Graph, Node, TensorInfo
from ptqconv.formats.tmfile.container import parse_tmfile
from ptqconv.formats.tmfile.reader import convert_model
from ptqconv.formats.tmfile.writer import tmfile_bytes


def small_tmfile() -> bytes:
    rng = np.random.default_rng(0)
    c = {"w": rng.standard_normal((4, 1, 3, 3)).astype(np.float32),
         "b": np.zeros(4, np.float32),
         "fw": rng.standard_normal((3, 64)).astype(np.float32)}
    nodes = [Node("Conv", "conv", ["x", "w", "b"], ["c"], {"kernel_shape": [3, 3],
                                                           "pads": [1, 1, 1, 1]}),
             Node("Relu", "relu", ["c"], ["r"]),
             Node("Flatten", "flat", ["r"], ["f"], {"axis": 1}),
             Node("Gemm", "fc", ["f", "fw"], ["y"], {"transB": 1})]
    g = Graph("small", [TensorInfo("x", "float32", (1, 1, 4, 4))],
              [TensorInfo("y", "float32", (1, 3))], nodes, c)
    return tmfile_bytes(g.infer_shapes())


def u32(data, off):
    return struct.unpack_from("<I", data, off)[0]


def put(data, off, value, fmt="<I"):
    out = bytearray(data)
    struct.pack_into(fmt, out, off, value)
    return bytes(out)


def layout(data):
    """Offsets of the subgraph, the node/tensor/buffer vectors and the nodes (tmfile.md §2-§5)."""
    root = u32(data, 8)
    sg = u32(data, u32(data, root + 8) + 4)
    vo_nodes, vo_tensors, vo_buffers = (u32(data, sg + k) for k in (20, 24, 28))
    nodes = [u32(data, vo_nodes + 4 + 4 * k) for k in range(u32(data, vo_nodes))]
    tensors = [u32(data, vo_tensors + 4 + 4 * k) for k in range(u32(data, vo_tensors))]
    return dict(root=root, sg=sg, nodes_vec=vo_nodes, tensors_vec=vo_tensors,
                buffers_vec=vo_buffers, nodes=nodes, tensors=tensors)


def corruptions(data):
    lay = layout(data)
    conv = lay["nodes"][-4]  # the Convolution
    const_tensor = lay["tensors"][0]
    first_buffer = u32(data, lay["buffers_vec"] + 4)
    return {
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "root_past_end": put(data, 8, len(data) + 64),
        "huge_tensor_count": put(data, lay["tensors_vec"], 0x7FFFFFFF),
        "negative_node_count": put(data, lay["nodes_vec"], -1, "<i"),
        "negative_dims": put(data, u32(data, const_tensor + 8) + 4, -3, "<i"),
        "operator_cycle": put(data, conv + 12, conv),
        "vector_cycle": put(data, lay["sg"] + 20, lay["sg"]),
        "unknown_op_type": put(data, u32(data, conv + 12) + 4, 200),
        "buffer_past_end": put(data, first_buffer + 4, len(data) + 100),
    }


def test_small_file_is_valid():
    model = parse_tmfile(small_tmfile(), "small.tmfile")
    assert [n.op for n in model.nodes][-5:] == ["InputOp", "Convolution", "ReLU", "Flatten",
                                               "FullyConnected"]


CLI_CASES = ("truncated", "root_past_end", "negative_node_count", "operator_cycle",
             "unknown_op_type", "buffer_past_end")


def test_malformed_files_through_the_cli(tmp_path):
    cases = corruptions(small_tmfile())
    procs = {}
    for name in CLI_CASES:
        data = cases[name]
        src = tmp_path / f"{name}.tmfile"
        src.write_bytes(data)
        out = tmp_path / f"{name}.onnx"
        cmd = [sys.executable, "-m", "ptqconv.core.cli", "-q", "--from", "tmfile", "--to", "onnx",
               "-i", str(src), "-o", str(out)]
        procs[name] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True), src, out)
    for name, (proc, src, out) in procs.items():
        _, err = proc.communicate(timeout=120)
        lines = err.strip().splitlines()
        assert proc.returncode == 2, (name, err)
        assert len(lines) == 1 and lines[0].startswith("ptqconv: error:"), (name, err)
        assert "Traceback" not in err and str(src) in lines[0] and "offset" in lines[0], (name, err)
        assert not os.path.exists(out)


def test_error_messages_say_what_is_wrong():
    cases = corruptions(small_tmfile())
    expected = {"operator_cycle": "cycle", "vector_cycle": "cycle",
                "unknown_op_type": "unknown operator type 200",
                "huge_tensor_count": "more than the file can hold",
                "negative_node_count": "more than the file can hold",
                "negative_dims": "negative dims", "truncated": "past the end",
                "root_past_end": "past the end", "buffer_past_end": "past the end",
                "empty": "too small"}
    assert set(expected) == set(cases)
    for name, words in expected.items():
        with pytest.raises(ModelFormatError, match=rf"{name}\.tmfile \(offset \d+\): .*{words}"):
            convert_model(parse_tmfile(cases[name], f"{name}.tmfile"), f"{name}.tmfile")


def test_random_damage_only_raises_format_errors():
    """Truncations and byte flips anywhere give ptqconv's own errors, never a crash."""
    data = small_tmfile()
    rng = np.random.default_rng(7)
    for k in range(300):
        damaged = bytearray(data[: rng.integers(0, len(data))] if k % 3 == 0 else data)
        for _ in range(rng.integers(1, 4)):
            if damaged:
                damaged[rng.integers(0, len(damaged))] = rng.integers(0, 256)
        try:
            convert_model(parse_tmfile(bytes(damaged), "damaged.tmfile"), "damaged.tmfile")
        except PtqconvError:
            pass
