"""TNN's ``quantization_cmd`` as a ptqconv command.

::

    ptqconv quantization_cmd -p m.tnnproto -m m.tnnmodel -i dir/ -b 0|2 -w 0|1 \\
        -n 104,117,123 -s 1,1,1 -r 1 -t 0|1|2 -o prefix

The input folder holds images (.jpg .jpeg .png .bmp) or tensors: ``.txt`` files of NCHW floats,
one value per line (``-n``/``-s`` apply to images only), or ``.npy``. The int8 model is written
as ``<prefix>.quantized.tnnproto`` + ``<prefix>.quantized.tnnmodel`` (prefix default ``model``,
as the current tool does; older releases wrote ``model_quantized.*``). Add ``--print-config`` to
see the equivalent ptqconv YAML.
"""
from __future__ import annotations

from ptqconv.core.errors import PtqconvError
from ptqconv.core.hookspecs import hookimpl
from ptqconv.core.records import Command
from ptqconv.plugins.dialects.common import (SWITCHES, SWITCH_HELP, DialectParser, Unsupported,
                                             absolute, apply_policy, flag_value, number_list,
                                             resolve, run_or_print, take_flags)

TOOL = "quantization_cmd"
BLOB_METHODS = {"0": "minmax", "1": Unsupported("ADMM", "TNN itself rejects ADMM for blobs"),
                "2": "kl-mnn", "3": Unsupported("ASY_MIN_MAX", "the tnn-int8 writer stores "
                                                "symmetric blob scales only"),
                "4": "aciq", "5": "aciq"}
WEIGHT_METHODS = {"0": "minmax", "1": "admm",
                  "3": Unsupported("ASY_MIN_MAX", "weights are quantized symmetrically")}
MERGE_TYPES = {0: "per-channel", 1: "mix", 2: "per-tensor"}


def parser() -> DialectParser:
    """The quantization_cmd flags of the seed doc (long names included)."""
    p = DialectParser(prog=f"ptqconv {TOOL}", allow_abbrev=False,
                      description="TNN post-training quantization on ptqconv.",
                      epilog="ptqconv calibrates blob scales per tensor; with -t 0 every channel "
                             "entry of a blob scale holds the same value. " + SWITCH_HELP)
    p.add_argument("-p", "--proto", help="tnnproto model description file (required)")
    p.add_argument("-m", "--model", help="tnnmodel model parameter file (required)")
    p.add_argument("-i", "--input_path", help="folder of quantization inputs: images or .txt "
                   "files of NCHW floats, one per line (required)")
    p.add_argument("-b", "--blob_method", default="0", help="feature map method: 0 Min-Max "
                   "(default), 2 KL, 4 ACIQ Gaussian, 5 ACIQ Laplace")
    p.add_argument("-w", "--weight_method", default="0", help="weight method: 0 Min-Max "
                   "(default), 1 ADMM")
    p.add_argument("-n", "--mean", "--bias", dest="mean", help="mean per channel, e.g. "
                   "0.0,0.0,0.0 (images only)")
    p.add_argument("-s", "--scale", help="scale per channel, e.g. 1.0,1.0,1.0 (images only); "
                   "input_pre = (input - mean) * scale")
    p.add_argument("-r", "--reverse_channel", default="0", help="0: RGB order (default), 1: BGR")
    p.add_argument("-t", "--merge_type", default="0", help="0 per-channel (default), 1 mix "
                   "(weights per-channel, blobs per-tensor), 2 per-tensor")
    p.add_argument("-o", "--output", default="model", help="output name: writes "
                   "NAME.quantized.tnnproto and NAME.quantized.tnnmodel (default 'model')")
    return p


def config_from_args(args) -> dict:
    """The ptqconv config of parsed quantization_cmd flags."""
    for flag, value in (("-p", args.proto), ("-m", args.model), ("-i", args.input_path)):
        if not value:
            raise PtqconvError(f"{TOOL}: {flag} is required")
    blob = resolve(TOOL, "-b", args.blob_method, BLOB_METHODS)
    weight = resolve(TOOL, "-w", args.weight_method, WEIGHT_METHODS, kind="weight_quantizers")
    merge = flag_value(args.merge_type, f"{TOOL} -t", tuple(MERGE_TYPES))
    reverse = flag_value(args.reverse_channel, f"{TOOL} -r")
    calibration = {"data": absolute(args.input_path), "method": blob}
    if blob == "aciq":
        calibration["params"] = {"clamp": False, "distribution":
                                 "laplace" if str(args.blob_method).strip() == "5" else "gauss"}
    pre = {"pixel": "BGR" if reverse else "RGB"}
    # TNN's defaults hold 4 values (RGBA); an image here has 3 channels
    if args.mean:
        pre["mean"] = number_list(args.mean, f"{TOOL} -n")[:3]
    if args.scale:
        pre["norm"] = number_list(args.scale, f"{TOOL} -s")[:3]
    name = args.output
    return {"input": [absolute(args.proto), absolute(args.model)], "from": "tnn",
            "to": "tnn-int8", "backend": "tnn-cpu",
            "output": [absolute(f"{name}.quantized.tnnproto"),
                       absolute(f"{name}.quantized.tnnmodel")],
            "calibration": calibration, "preprocess": pre,
            "quantize": {"weights": MERGE_TYPES[merge], "weight_method": weight}}


def run(argv) -> int:
    """``ptqconv quantization_cmd ...``: see :mod:`ptqconv.plugins.dialects.tnn`."""
    rest, flags = take_flags(argv, *SWITCHES)
    config = apply_policy(config_from_args(parser().parse_args(rest)), flags)
    if run_or_print(config, [TOOL] + list(argv), flags) is not None:
        print("quantize model success!")
    return 0


@hookimpl
def register_commands(register):
    register(Command(TOOL, run, "TNN's quantization_cmd: images/.txt -> int8 tnnproto/tnnmodel"))
