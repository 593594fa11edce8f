"""ncnn's quantization tools as ptqconv commands: ``ncnn2table``, ``ncnn2int8``, ``ncnnoptimize``.

::

    ptqconv ncnnoptimize in.param in.bin out.param out.bin 0|1
    ptqconv ncnn2table in.param in.bin imagelist.txt[,list2.txt] out.table \\
        mean=[104,117,123][,[..]] norm=[0.017,0.017,0.017][,[..]] shape=[224,224,3][,[..]] \\
        pixel=BGR[,GRAY] thread=8 method=kl|aciq|eq [type=0|1]
    ptqconv ncnn2int8 in.param in.bin out.param out.bin in.table

Each maps onto a ptqconv config (add ``--print-config`` to see it as YAML): ``ncnn2table`` is a
table-only job (calibrate, ``save_table``), ``ncnn2int8`` writes ``ncnn-int8`` from
``load_table`` (tables written by ncnn's own ncnn2table work: commented weight lines keep that
layer in float), ``ncnnoptimize`` rewrites the float model (flag 1: fp16 weight storage).
"""
from __future__ import annotations

from typing import Dict, List

from ptqconv.core.errors import PtqconvError
from ptqconv.core.hookspecs import hookimpl
from ptqconv.core.records import Command
from ptqconv.plugins.dialects.common import (SWITCHES, SWITCH_HELP, Unsupported, absolute,
                                             apply_policy, bracket_lists, one_or_list, parse_int,
                                             prune, resolve, run_or_print, take_flags)

METHODS = {"kl": "kl", "aciq": "aciq", "eq": "eq"}
PIXELS = {"RGB": "RGB", "BGR": "BGR", "GRAY": "GRAY", "RGBA": "RGBA", "BGRA": "BGRA",
          "RAW": "BGR"}  # RAW: the pixels as OpenCV decodes them (BGR)
CHANNELS = {"RGB": 3, "BGR": 3, "GRAY": 1, "RGBA": 4, "BGRA": 4}
KEYS = ("mean", "norm", "shape", "pixel", "thread", "method", "type")
OPTIMIZE_FLAGS = {"0": None, "1": 1, "65536": Unsupported("65536", "fp16 arithmetic hints")}

TABLE_USAGE = ("ncnn2table [ncnnparam] [ncnnbin] [list,...] [ncnntable] [(key=value)...]")
TABLE_HELP = f"""usage: ptqconv {TABLE_USAGE} [--print-config] [--seed-exact] [-q]

Calibrate an ncnn model and write ncnn's calibration table (a table-only ptqconv job).
  mean=[104.0,117.0,123.0],...   per input, subtracted from the pixels
  norm=[1.0,1.0,1.0],...         per input, multiplied after the mean
  shape=[224,224,3],...          per input [w,h,c] or [w,h]; [0,0] keeps the image size
  pixel=RAW/RGB/BGR/GRAY/RGBA/BGRA,...  pixel order fed to the model (RAW = as decoded, BGR)
  thread=8                       onnxruntime threads
  method=kl/aciq/eq              kl: ncnn's KL; aciq: Gaussian ACIQ as ncnn (not clamped to the
                                 absmax); eq: KL then ncnn's per-layer cosine search
  type=0/1                       0: images (default), 1: .npy tensors (mean/norm/pixel unused)
Several model inputs: comma-separated list files and one [..] group per input for each key.
Weights are per-channel max-abs (ncnn's ACIQ weight clipping is not emulated).
""" + SWITCH_HELP + "\n"
INT8_USAGE = "ncnn2int8 [inparam] [inbin] [outparam] [outbin] [calibration table]"
INT8_HELP = f"""usage: ptqconv {INT8_USAGE} [--print-config] [-q]

Write the int8 ncnn model from a calibration table (ncnn2table's, ptqconv's or ncnn's own; a
commented '#layer_param_0' weight line keeps that layer in float).
""" + SWITCH_HELP + "\n"
OPT_USAGE = "ncnnoptimize [inparam] [inbin] [outparam] [outbin] [flag]"
OPT_HELP = f"""usage: ptqconv {OPT_USAGE} [--print-config] [-q]

Rewrite an ncnn model with ptqconv's graph passes (BatchNorm folding, activation fusion,
Identity/Dropout removal). flag 0: fp32 weights, 1: fp16 weight storage.
""" + SWITCH_HELP + "\n"


def _per_input(values: Dict[str, list], n: int, key: str):
    items = values.get(key)
    if items is not None and len(items) != n:
        raise PtqconvError(f"ncnn2table: expect {n} {key}(s), one per list file, but got "
                           f"{len(items)}")
    return items


def _shape_size(shape: List[float], index: int):
    """ncnn's [w,h,c] / [w,h] blob shape -> (size [h, w] or None for [0,0], channels or None)."""
    dims = [int(v) for v in shape]
    if len(dims) not in (2, 3) or any(d < 0 for d in dims):
        raise PtqconvError(f"ncnn2table: shape #{index + 1} must be [w,h,c] or [w,h], got {dims}")
    w, h = dims[0], dims[1]
    channels = dims[2] if len(dims) == 3 else None
    if w == 0 and h == 0:
        return None, channels
    if w <= 0 or h <= 0:
        raise PtqconvError(f"ncnn2table: shape #{index + 1} {dims}: resizing one side with the "
                           f"aspect ratio kept is not supported; give both w and h, or [0,0]")
    return [h, w], channels


def table_config(argv: List[str]) -> dict:
    """The ptqconv config of an ``ncnn2table`` command line (without ptqconv's own switches)."""
    positional = [a for a in argv if "=" not in a]
    pairs = [a for a in argv if "=" in a]
    if len(positional) == 3:
        raise PtqconvError("ncnn2table: a weight-only table (no image lists) is not supported; "
                           f"give the list files (usage: {TABLE_USAGE})")
    if len(positional) != 4:
        raise PtqconvError(f"ncnn2table: expected 4 file arguments, got {len(positional)} "
                           f"(usage: {TABLE_USAGE})")
    param, binary, lists, table = positional
    opts: Dict[str, str] = {}
    for item in pairs:
        key, _, value = item.partition("=")
        if key not in KEYS:
            raise PtqconvError(f"ncnn2table: unknown argument '{item}' (keys: {', '.join(KEYS)})")
        opts[key] = value
    list_files = [absolute(p) for p in lists.split(",") if p]
    n = len(list_files)
    file_type = parse_int(opts.get("type", "0"), "ncnn2table type")
    if file_type not in (0, 1):
        raise PtqconvError(f"ncnn2table: type={file_type} is not 0 (images) or 1 (npy)")
    method = resolve("ncnn2table", "method", opts.get("method", "kl"), METHODS)
    calibration = {"data": one_or_list(list_files), "method": method}
    if method == "aciq":
        calibration["params"] = {"clamp": False}  # ncnn does not clamp T to the absmax
    if "thread" in opts:
        threads = parse_int(opts["thread"], "ncnn2table thread")
        if threads < 0:
            raise PtqconvError(f"ncnn2table: malformed thread {threads}")
        calibration["threads"] = threads
    config = {"input": [absolute(param), absolute(binary)], "from": "ncnn",
              "backend": "ncnn-cpu", "save_table": absolute(table), "calibration": calibration}
    shapes = [_shape_size(v, k) for k, v in enumerate(bracket_lists(opts["shape"],
                                                                      "ncnn2table shape"))] \
        if "shape" in opts else []
    if file_type == 0:
        blocks = _image_preprocess(opts, n)
        config["preprocess"] = one_or_list(blocks)
        shapes = [(b.get("size"), CHANNELS[b["pixel"]]) for b in blocks]
    input_shape = _input_shape(shapes, param)
    if input_shape:
        config["options"] = {"input_shape": input_shape}
    return config


def _image_preprocess(opts: Dict[str, str], n: int) -> List[dict]:
    values = {k: bracket_lists(opts[k], f"ncnn2table {k}") for k in ("mean", "norm", "shape")
              if k in opts}
    if "pixel" in opts:
        names = [p.strip() for p in opts["pixel"].split(",") if p.strip()]
        for p in names:
            if p not in PIXELS:
                raise PtqconvError(f"ncnn2table: pixel '{p}' is not one of {', '.join(PIXELS)}")
        values["pixel"] = names
    for key in ("mean", "norm", "shape", "pixel"):
        if key not in values:
            raise PtqconvError(f"ncnn2table: expect {n} {key}(s) for image lists (set {key}=...)")
        _per_input(values, n, key)
    blocks = []
    for k in range(n):
        pixel = PIXELS[values["pixel"][k]]
        size, channels = _shape_size(values["shape"][k], k)
        if channels is not None and channels != CHANNELS[pixel]:
            raise PtqconvError(f"ncnn2table: shape #{k + 1} has {channels} channel(s) but "
                               f"pixel={values['pixel'][k]} gives {CHANNELS[pixel]}")
        blocks.append(prune({"pixel": pixel, "size": size, "mean": values["mean"][k],
                             "norm": values["norm"][k]}))
    return blocks


def _input_shape(shapes, param: str):
    """The reader option ``input_shape`` for the blobs ncnn2table feeds (``1,c,h,w``; by input
    name when there are several), or None when a size is not fixed."""
    if not shapes or any(size is None or not c for size, c in shapes):
        return None
    dims = [f"1,{c},{size[0]},{size[1]}" for size, c in shapes]
    if len(dims) == 1:
        return dims[0]
    return ";".join(f"{name}:{d}" for name, d in zip(input_blobs(param), dims))


def input_blobs(param: str) -> List[str]:
    """The blobs of an ncnn .param's Input layers, in file order (ncnn2table's list order)."""
    from ptqconv.formats.ncnn.param import parse_param
    try:
        with open(param, "r", encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise PtqconvError(f"{param}: model file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PtqconvError(f"{param}: cannot read: {exc}") from None
    return [layer.outputs[0] for layer in parse_param(text, param).layers
            if layer.type == "Input" and layer.outputs]


def int8_config(argv: List[str]) -> dict:
    """The ptqconv config of an ``ncnn2int8`` command line."""
    if len(argv) != 5:
        raise PtqconvError(f"ncnn2int8: expected 5 file arguments, got {len(argv)} "
                           f"(usage: {INT8_USAGE})")
    inparam, inbin, outparam, outbin, table = argv
    return {"input": [absolute(inparam), absolute(inbin)], "from": "ncnn", "to": "ncnn-int8",
            "output": [absolute(outparam), absolute(outbin)], "load_table": absolute(table)}


def optimize_config(argv: List[str]) -> dict:
    """The ptqconv config of an ``ncnnoptimize`` command line."""
    if len(argv) == 7:
        raise PtqconvError("ncnnoptimize: cutting the graph (cutstart cutend) is not supported "
                           "by ptqconv")
    if len(argv) != 5:
        raise PtqconvError(f"ncnnoptimize: expected 5 arguments, got {len(argv)} "
                           f"(usage: {OPT_USAGE})")
    inparam, inbin, outparam, outbin, flag = argv
    if flag not in OPTIMIZE_FLAGS:
        raise PtqconvError(f"ncnnoptimize: flag '{flag}' is not 0 (fp32) or 1 (fp16 storage)")
    fp16 = OPTIMIZE_FLAGS[flag]
    if isinstance(fp16, Unsupported):
        raise PtqconvError(f"ncnnoptimize: flag {flag} ({fp16.reason}) is not supported")
    config = {"input": [absolute(inparam), absolute(inbin)], "from": "ncnn", "to": "ncnn",
              "output": [absolute(outparam), absolute(outbin)]}
    if fp16:
        config["options"] = {"fp16": 1}
    return config


def _command(name, builder, help_text):
    def run(argv) -> int:
        if not argv or argv[0] in ("-h", "--help"):
            print(help_text, end="")
            return 0
        rest, flags = take_flags(argv, *SWITCHES)
        run_or_print(apply_policy(builder(rest), flags), [name] + list(argv), flags)
        return 0
    run.__doc__ = f"``ptqconv {name} ...``: see :mod:`ptqconv.plugins.dialects.ncnn`."
    return run


run_ncnn2table = _command("ncnn2table", table_config, TABLE_HELP)
run_ncnn2int8 = _command("ncnn2int8", int8_config, INT8_HELP)
run_ncnnoptimize = _command("ncnnoptimize", optimize_config, OPT_HELP)


@hookimpl
def register_commands(register):
    register(Command("ncnn2table", run_ncnn2table, "ncnn's ncnn2table: calibrate, write a .table"))
    register(Command("ncnn2int8", run_ncnn2int8, "ncnn's ncnn2int8: .param/.bin + table -> int8"))
    register(Command("ncnnoptimize", run_ncnnoptimize, "ncnn's ncnnoptimize: fp32/fp16 rewrite"))
