"""Tengine's ``quant_tool_int8`` as a ptqconv command.

::

    ptqconv quant_tool_int8 -m in.tmfile -i images/ -o out.tmfile -g 3,224,224 -a 1 \\
        -w 104.007,116.669,122.679 -s 0.017,0.017,0.017 -b 1 -c 0 -y 0,0 -t 4

It writes the int8 tmfile and, as the tool does, the calibration table ``table_<algorithm>.scale``
in the working folder (``-f`` loads such a table instead of calibrating). Add ``--print-config``
to see the equivalent ptqconv YAML.
"""
from __future__ import annotations

import os
import sys
from typing import List

from ptqconv.core.errors import PtqconvError
from ptqconv.core.hookspecs import hookimpl
from ptqconv.core.records import Command
from ptqconv.plugins.dialects.common import (PRINT_CONFIG, SWITCHES, SWITCH_HELP, DialectParser,
                                             Unsupported, absolute, apply_policy, flag_value,
                                             number_list, prune, resolve, run_or_print, take_flags)

TOOL = "quant_tool_int8"
ALGORITHMS = {"0": "minmax", "1": "kl-tengine", "2": "aciq",
              "3": Unsupported("DFQ", "cross-layer equalization is not implemented"),
              "4": Unsupported("EQ", "Tengine's weight-zoom search is not implemented; "
                                     "ncnn's method=eq is available as calibration method 'eq'")}
ALGORITHM_LABELS = {"0": ("MIN-MAX", "minmax"), "1": ("KL", "kl"), "2": ("ACIQ", "aciq")}
DEFAULT_MEAN = [104.0, 117.0, 123.0]
DEFAULT_SCALE = [1.0, 1.0, 1.0]
CROP_SHORT_SIDE = 256


def parser() -> DialectParser:
    """The quant_tool_int8 flags (the seed doc's, plus the tool's -f and -k)."""
    p = DialectParser(prog=f"ptqconv {TOOL}", allow_abbrev=False,
                      description="Tengine post-training quantization (int8, per-channel, "
                                  "symmetric) on ptqconv. Writes the int8 tmfile and "
                                  "./table_<algorithm>.scale.",
                      epilog=SWITCH_HELP)
    p.add_argument("-m", dest="model", help="path to input float32 tmfile")
    p.add_argument("-i", dest="images", help="path to calibration images folder")
    p.add_argument("-o", dest="output", help="path to output int8 tmfile")
    p.add_argument("-f", dest="scale_file", help="path to a calibration scale file to use instead "
                   "of calibrating")
    p.add_argument("-a", dest="algorithm", default="1", help="the type of quant algorithm (0: "
                   "min-max, 1: kl, 2: aciq; 3 DFQ and 4 EQ are not supported; default is 1)")
    p.add_argument("-g", dest="size", default="3,224,224", help="the size of input image (c,h,w; "
                   "the whole image is resized), default is 3,224,224")
    p.add_argument("-w", dest="mean", help="value of mean, default is 104.0,117.0,123.0")
    p.add_argument("-s", dest="scale", help="value of normalize, default is 1.0,1.0,1.0")
    p.add_argument("-b", dest="swap_rb", default="1", help="swap first and last channels of a "
                   "3-channel image (images decode as BGR; 1: feed RGB), default is 1")
    p.add_argument("-c", dest="center_crop", default="0", help="center crop: resize the shorter "
                   "side to 256, then crop the -g size (0:OFF, 1:ON), default is 0")
    p.add_argument("-y", dest="letterbox", default="0", help="letter box: 1 or rows,cols "
                   "(must equal the -g size) keeps the aspect ratio and pads with the value that "
                   "normalizes to 0.5 (0:OFF, default)")
    p.add_argument("-k", dest="focus", default="0", help="YOLOv5 focus: after preprocessing, "
                   "each 2x2 pixel block goes to 4 channel groups, so the model input is "
                   "4c x h/2 x w/2 for -g c,h,w (0:OFF, 1:ON), default is 0")
    p.add_argument("-t", dest="threads", default="4", help="count of processing threads, "
                   "default is 4")
    return p


def _letterbox(text: str, hw: List[int]) -> bool:
    values = [int(v) for v in number_list(text, f"{TOOL} -y")]
    if len(values) == 1:
        return bool(flag_value(str(values[0]), f"{TOOL} -y"))
    if len(values) != 2:
        raise PtqconvError(f"{TOOL}: -y expects 0, 1 or rows,cols, got '{text}'")
    if values == [0, 0]:
        return False
    if values != list(hw):
        raise PtqconvError(f"{TOOL}: -y {values[0]},{values[1]} must equal the -g size "
                           f"{hw[0]},{hw[1]} (the letter box is the model input)")
    return True


def config_from_args(args) -> dict:
    """The ptqconv config of parsed quant_tool_int8 flags."""
    if not args.model:
        raise PtqconvError(f"{TOOL}: the input file of Float32 tmfile file not specified (-m)")
    if not args.images and not args.scale_file:
        raise PtqconvError(f"{TOOL}: the input dir of Calibration image not specified (-i)")
    if not args.output:
        raise PtqconvError(f"{TOOL}: the output file of Int8 tmfile not specified (-o)")
    method = resolve(TOOL, "-a", args.algorithm, ALGORITHMS)
    dims = [int(v) for v in number_list(args.size, f"{TOOL} -g")]
    if len(dims) != 3 or min(dims) <= 0 or dims[0] not in (1, 3):
        raise PtqconvError(f"{TOOL}: -g must be c,h,w with c 1 or 3, got '{args.size}'")
    c, hw = dims[0], dims[1:]
    mean = number_list(args.mean, f"{TOOL} -w") if args.mean else DEFAULT_MEAN
    scale = number_list(args.scale, f"{TOOL} -s") if args.scale else DEFAULT_SCALE
    mean, scale = mean[:c], scale[:c]
    swap = flag_value(args.swap_rb, f"{TOOL} -b")
    pre = {"pixel": "GRAY" if c == 1 else ("RGB" if swap else "BGR"), "size": hw,
           "mean": mean, "norm": scale}
    if flag_value(args.center_crop, f"{TOOL} -c"):
        pre["resize_short"] = CROP_SHORT_SIDE
    elif _letterbox(args.letterbox, hw):
        pre["letterbox"] = [m + 0.5 / s if s else m for m, s in zip(mean, scale)]
    if flag_value(args.focus, f"{TOOL} -k"):
        if hw[0] % 2 or hw[1] % 2:
            raise PtqconvError(f"{TOOL}: -k 1 needs an even -g height and width, got "
                               f"{hw[0]},{hw[1]}")
        pre["space_to_depth"] = True
    threads = int(number_list(args.threads, f"{TOOL} -t")[0])
    label = ALGORITHM_LABELS[str(args.algorithm).strip()][1]
    calibration = {"data": absolute(args.images), "method": method, "threads": max(threads, 0),
}
    if method == "aciq":
        calibration["params"] = {"clamp": False}  # Tengine does not clamp T to the absmax
    config = {"input": absolute(args.model), "from": "tmfile", "to": "tmfile-int8",
              "output": absolute(args.output), "backend": "tengine-cpu",
              "quantize": {"unsigned_activations": False}}  # the tool's table is symmetric int8
    if args.scale_file:
        config["load_table"] = absolute(args.scale_file)
    else:
        config["save_table"] = absolute(f"table_{label}.scale")
        config["calibration"] = calibration
    config["preprocess"] = pre
    return prune(config)


def _banner(args, config) -> None:
    pre = config["preprocess"]
    algo = ALGORITHM_LABELS[str(args.algorithm).strip()][0]
    lines = ["", "---- Tengine Post Training Quantization Tool (ptqconv) ----", "",
             "Status      : int8, per-channel, symmetric",
             f"Input model : {args.model}", f"Output model: {args.output}",
             f"Calib images: {args.images or '-'}", f"Algorithm   : {algo}",
             f"Dims        : {' '.join(str(v) for v in [len(pre['mean'])] + pre['size'])}",
             f"Mean        : {' '.join(f'{v:g}' for v in pre['mean'])}",
             f"Scale       : {' '.join(f'{v:g}' for v in pre['norm'])}",
             f"BGR2RGB     : {'ON' if pre['pixel'] == 'RGB' else 'OFF'}",
             f"Center crop : {'ON' if 'resize_short' in pre else 'OFF'}",
             f"Letter box  : {'ON' if 'letterbox' in pre else 'OFF'}",
             f"YOLOv5 focus: {'ON' if pre.get('space_to_depth') else 'OFF'}",
             f"Thread num  : {config.get('calibration', {}).get('threads', '-')}", ""]
    print("\n".join(lines), file=sys.stderr)


def run(argv) -> int:
    """``ptqconv quant_tool_int8 ...``: see :mod:`ptqconv.plugins.dialects.tengine`."""
    rest, flags = take_flags(argv, *SWITCHES)
    args = parser().parse_args(rest)
    config = apply_policy(config_from_args(args), flags)
    quiet = PRINT_CONFIG in flags or bool({"-q", "--quiet"} & flags)
    if not quiet:
        _banner(args, config)
    result = run_or_print(config, [TOOL] + list(argv), flags)
    if result is not None and not quiet:
        info = "[Quant Tools Info]:"
        if "save_table" in config:
            print(f"{info} Calibration table done, output {os.path.relpath(config['save_table'])}",
                  file=sys.stderr)
        else:
            print(f"{info} Calibration file is using {args.scale_file}", file=sys.stderr)
        print(f"{info} Save Int8 tmfile done, {args.output}\n\n---- Tengine Int8 tmfile create "
              f"success ----", file=sys.stderr)
    return 0


@hookimpl
def register_commands(register):
    register(Command(TOOL, run, "Tengine's quant_tool_int8: images -> int8 tmfile + .scale"))
