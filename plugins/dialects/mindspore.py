"""MindSpore Lite's ``converter_lite`` (post-training quantization) as a ptqconv command.

::

    ptqconv converter_lite --fmk=ONNX --modelFile=model.onnx --outputFile=model_quant \\
        --quantType=PostTraining --config_file=config.cfg [--to=onnx|mnn|tmfile|tnn|ncnn]

ptqconv has **no .ms writer**: ``--to`` picks the ptqconv writer (default ``onnx``; its ``-int8``
variant with ``--quantType=PostTraining``), and ``--outputFile`` gets that format's file ending
when it has none. The config file is MindSpore's ``key=value`` text: the r0.7-r1.2 keys
(``image_path`` with one folder per model input separated by commas, ``batch_count``,
``method_x``, ``thread_num``, ``bias_correction``) and the later section keys
(``calibrate_path=name:folder,...``, ``calibrate_size``, ``input_type=BIN``,
``activation_quant_method``, ``bias_correction``, ``thread_num``). Calibration files are
preprocessed inputs: raw float32 ``.bin`` files shaped like the model input (``.npy`` and
``.txt`` work too). Add ``--print-config`` to see the equivalent ptqconv YAML.
"""
from __future__ import annotations

import os
from typing import Dict, List

from ptqconv.core.errors import PtqconvError, did_you_mean
from ptqconv.core.hookspecs import hookimpl
from ptqconv.core.records import Command
from ptqconv.plugins.dialects.common import (SWITCHES, SWITCH_HELP, DialectParser, Unsupported,
                                             absolute, apply_policy, parse_int, prune, resolve,
                                             run_or_print, take_flags)

TOOL = "converter_lite"
FMK = {"ONNX": "onnx", "MNN": "mnn", "PYTORCH": "torchscript", "NCNN": "ncnn",
       "TMFILE": "tmfile", "TNN": "tnn"}
NO_READER = {"MS": "MindSpore .ms", "MINDIR": "MindIR", "TF": "TensorFlow",
             "TFLITE": "TensorFlow Lite", "CAFFE": "Caffe"}
METHODS = {"KL": "kl-mindspore", "MAX_MIN": "minmax", "RemovalOutlier": "percentile",
           "REMOVAL_OUTLIER": "percentile"}
OUTLIER_PERCENTILE = 99.99  # MindSpore's REMOVAL_OUTLIER keeps ranks 0.0001 .. 0.9999
QUANT_TYPES = {"PostTraining": "int8", "FULL_QUANT": "int8",
               "WeightQuant": Unsupported("WeightQuant", "weight-only quantization"),
               "WEIGHT_QUANT": Unsupported("WEIGHT_QUANT", "weight-only quantization")}
CONFIG_KEYS = ("image_path", "batch_count", "method_x", "thread_num", "bias_correction", "mixed",
               "mean_error_threshold", "calibrate_path", "calibrate_size", "input_type",
               "activation_quant_method", "quant_type", "bit_num", "per_channel")
DEFAULT_COUNT = 100


def parser() -> DialectParser:
    """converter_lite's flags (``--key=value``) plus ``--to``."""
    p = DialectParser(prog=f"ptqconv {TOOL}", allow_abbrev=False,
                      description="MindSpore Lite converter_lite on ptqconv. There is no .ms "
                                  "writer: --to chooses the ptqconv writer (default onnx; with "
                                  "--quantType=PostTraining its -int8 variant).",
                      epilog="config file keys: image_path (folder of preprocessed .bin inputs; "
                             "one folder per model input, comma-separated), batch_count (inputs "
                             "used, default 100), method_x (KL: MindSpore's KL variant; MAX_MIN; "
                             "RemovalOutlier: clip at the 99.99th percentile of |x|, from ptqconv's "
                             "streaming histogram instead of per-batch quantiles), thread_num, "
                             "bias_correction; and calibrate_path=name:folder,..., calibrate_size, "
                             "input_type=BIN, activation_quant_method, bit_num, per_channel. "
                             + SWITCH_HELP)
    p.add_argument("--fmk", required=True, help="source model type: ONNX, MNN, PYTORCH "
                   "(TorchScript), or ptqconv's NCNN, TMFILE, TNN; MS/MINDIR/TF/TFLITE/CAFFE have "
                   "no ptqconv reader")
    p.add_argument("--modelFile", required=True, help="source model")
    p.add_argument("--outputFile", required=True, help="output path (the writer's ending is "
                   "added when it has none)")
    p.add_argument("--weightFile", help="Caffe weights (not supported)")
    p.add_argument("--quantType", help="PostTraining (FULL_QUANT) for int8; omit for a float "
                   "conversion")
    p.add_argument("--config_file", "--configFile", dest="config_file",
                   help="calibration config (key=value)")
    p.add_argument("--bitNum", help="bits (default 8)")
    p.add_argument("--to", help="ptqconv writer (onnx, mnn, tmfile, tnn, ncnn, ...; default onnx)")
    return p


def read_cfg(path: str) -> Dict[str, str]:
    """Read MindSpore's ``key=value`` config (``#`` comments and ``[section]`` lines allowed)."""
    values: Dict[str, str] = {}
    try:
        with open(path, "r", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise PtqconvError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PtqconvError(f"{path}: cannot read config: {exc}") from None
    for k, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#") or (line.startswith("[") and line.endswith("]")):
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise PtqconvError(f"{path} (line {k}): expected key=value, got '{line[:60]}'")
        if key not in CONFIG_KEYS:
            raise PtqconvError(f"{path} (line {k}): unknown key '{key}'"
                               f"{did_you_mean(key, CONFIG_KEYS)}")
        values[key] = value
    return values


def _bool(text: str, what: str) -> bool:
    lowered = text.strip().lower()
    if lowered not in ("true", "false", "1", "0"):
        raise PtqconvError(f"{what}: expected true or false, got '{text}'")
    return lowered in ("true", "1")


def _model_inputs(reader: str, model: str) -> List[str]:
    from ptqconv.core.plugins import get_registry
    return [t.name for t in get_registry().reader(reader).read([model], {}).graph.inputs]


def _data(cfg: Dict[str, str], cfg_path: str, reader: str, model: str):
    """Calibration folders in model-input order (``image_path`` or ``calibrate_path``)."""
    base = os.path.dirname(os.path.abspath(cfg_path))

    def folder(p):
        p = p.strip()
        return os.path.abspath(p if os.path.isabs(p) or os.path.exists(p) else
                               os.path.join(base, p))

    if "calibrate_path" in cfg:
        named = {}
        for item in cfg["calibrate_path"].split(","):
            name, sep, p = item.strip().rpartition(":")
            if not sep or not name:
                raise PtqconvError(f"{cfg_path}: calibrate_path expects input_name:folder "
                                   f"items, got '{item}'")
            named[name] = folder(p)
        names = _model_inputs(reader, model)
        missing = [n for n in names if n not in named]
        if missing:
            raise PtqconvError(f"{cfg_path}: calibrate_path has no folder for model input "
                               f"'{missing[0]}' (inputs: {', '.join(names)})")
        return [named[n] for n in names]
    if "image_path" not in cfg:
        raise PtqconvError(f"{cfg_path}: image_path (or calibrate_path) is required")
    return [folder(p) for p in cfg["image_path"].split(",") if p.strip()]


def _output(path: str, writer_fmt) -> List[str]:
    """``--outputFile`` with the writer's ending added when it has none (pair for two files)."""
    main = path
    if writer_fmt.extensions and not os.path.splitext(path)[1]:
        main = path + writer_fmt.extensions[0]
    if writer_fmt.companions:
        stem = main[: -len(writer_fmt.extensions[0])] if writer_fmt.extensions and \
            main.endswith(writer_fmt.extensions[0]) else os.path.splitext(main)[0]
        return [absolute(main)] + [absolute(stem + c) for c in writer_fmt.companions]
    return [absolute(main)]


def config_from_args(args) -> dict:
    """The ptqconv config of parsed converter_lite flags."""
    fmk = args.fmk.strip().upper()
    if fmk in NO_READER:
        raise PtqconvError(f"{TOOL}: --fmk={args.fmk}: ptqconv has no {NO_READER[fmk]} reader "
                           f"(readers: {', '.join(sorted(FMK))})")
    if fmk not in FMK:
        raise PtqconvError(f"{TOOL}: --fmk={args.fmk} is not one of {', '.join(FMK)}")
    if args.weightFile:
        raise PtqconvError(f"{TOOL}: --weightFile (Caffe) is not supported by ptqconv")
    reader = FMK[fmk]
    quant = None
    if args.quantType:
        if args.quantType not in QUANT_TYPES:
            raise PtqconvError(f"{TOOL}: --quantType={args.quantType} is not one of "
                               f"{', '.join(QUANT_TYPES)}")
        quant = QUANT_TYPES[args.quantType]
        if isinstance(quant, Unsupported):
            raise PtqconvError(f"{TOOL}: --quantType={args.quantType} ({quant.reason}) is not "
                               f"supported by ptqconv")
    from ptqconv.core.plugins import get_registry
    registry = get_registry()
    to = args.to or "onnx"
    if quant and not to.endswith(("-int8", "-uint8")):
        to = f"{to}-{quant}"
    writer_fmt, _ = registry.writer(to)
    config = {"input": absolute(args.modelFile), "from": reader, "to": to,
              "output": None, "quantize": {}}
    outs = _output(args.outputFile, writer_fmt)
    config["output"] = outs[0] if len(outs) == 1 else outs
    if args.bitNum:
        config["quantize"]["bits"] = parse_int(args.bitNum, f"{TOOL} --bitNum")
    if quant:
        if not args.config_file:
            raise PtqconvError(f"{TOOL}: --quantType={args.quantType} needs --config_file")
        config.update(_quant_config(args.config_file, reader, args.modelFile, config["quantize"]))
    return prune(config)


def _quant_config(cfg_path: str, reader: str, model: str, quantize: dict) -> dict:
    cfg = read_cfg(cfg_path)
    if "quant_type" in cfg and cfg["quant_type"] != "FULL_QUANT":
        raise PtqconvError(f"{cfg_path}: quant_type={cfg['quant_type']} is not supported "
                           f"(FULL_QUANT is)")
    if cfg.get("input_type", "BIN").upper() != "BIN":
        raise PtqconvError(f"{cfg_path}: input_type={cfg['input_type']} is not supported: "
                           f"give preprocessed BIN files")
    if "mixed" in cfg and _bool(cfg["mixed"], f"{cfg_path} mixed"):
        raise PtqconvError(f"{cfg_path}: mixed=true (mixed bit search) is not supported")
    method_text = cfg.get("activation_quant_method", cfg.get("method_x", "KL"))
    method = resolve(TOOL, "method_x", method_text, METHODS)
    folders = _data(cfg, cfg_path, reader, model)
    count_text = cfg.get("calibrate_size", cfg.get("batch_count"))
    count = parse_int(count_text, f"{cfg_path} batch_count") if count_text else DEFAULT_COUNT
    if count <= 0:
        raise PtqconvError(f"{cfg_path}: batch_count must be greater than 0")
    calibration = {"data": folders[0] if len(folders) == 1 else folders, "count": count,
                   "method": method}
    if method == "percentile":
        calibration["params"] = {"percentile": OUTLIER_PERCENTILE}
    if "thread_num" in cfg:
        calibration["threads"] = parse_int(cfg["thread_num"], f"{cfg_path} thread_num")
    if "bias_correction" in cfg:
        quantize["bias_correction"] = _bool(cfg["bias_correction"], f"{cfg_path} bias_correction")
    if "bit_num" in cfg:
        quantize["bits"] = parse_int(cfg["bit_num"], f"{cfg_path} bit_num")
    if "per_channel" in cfg and not _bool(cfg["per_channel"], f"{cfg_path} per_channel"):
        quantize["weights"] = "per-tensor"
    return {"calibration": calibration, "quantize": quantize}


def run(argv) -> int:
    """``ptqconv converter_lite ...``: see :mod:`ptqconv.plugins.dialects.mindspore`."""
    rest, flags = take_flags(argv, *SWITCHES)
    config = apply_policy(config_from_args(parser().parse_args(rest)), flags)
    if run_or_print(config, [TOOL] + list(argv), flags) is not None:
        print("CONVERT RESULT SUCCESS:0")
    return 0


@hookimpl
def register_commands(register):
    register(Command(TOOL, run, "MindSpore Lite's converter_lite (no .ms writer: --to picks one)"))
