"""MNN's offline quantization tool (``quantized.out``) as a ptqconv command.

::

    ptqconv quantized origin.mnn quan.mnn imageInputConfig.json

Every key of the tool's JSON config is honoured (see :data:`KEYS`); add ``--print-config`` to see
the equivalent ptqconv YAML. ``input_type: "sequence"`` reads one folder per sample under
``path``, holding ``<input name>.txt`` (white-space separated values) for every model input.
"""
from __future__ import annotations

import json
import os
from typing import List

from ptqconv.core.errors import PtqconvError, did_you_mean
from ptqconv.core.hookspecs import hookimpl
from ptqconv.core.records import Command
from ptqconv.plugins.dialects.common import (SWITCHES, SWITCH_HELP, absolute, apply_policy, prune,
                                             resolve, run_or_print, take_flags)

TOOL = "quantized"
USAGE = ("quantized origin.mnn quan.mnn config.json [--print-config] [--seed-exact] "
         "[--bias-correction] [-q]")
FEATURE_METHODS = {"KL": "kl-mnn", "ADMM": "admm", "EMA": "ema"}
WEIGHT_METHODS = {"MAX_ABS": "minmax", "ADMM": "admm"}
FORMATS = {"RGB": "RGB", "BGR": "BGR", "RGBA": "RGBA", "BGRA": "BGRA", "GRAY": "GRAY"}
EMA_BATCH = 32  # MNN's batch size for EMA when the config sets none
KEYS = {
    "format": "pixel format fed to the model (RGB, BGR, RGBA, BGRA, GRAY; default BGR)",
    "mean": "subtracted per channel", "normal": "multiplied per channel after the mean",
    "width": "model input width", "height": "model input height",
    "center_crop_h": "fraction of the image height kept by a center crop before the resize "
                     "(default 1.0)",
    "center_crop_w": "fraction of the image width kept by a center crop before the resize "
                     "(default 1.0)",
    "path": "calibration folder (images, or one sub-folder per sample for 'sequence')",
    "used_image_num": "use the first N files (sorted)", "used_sample_num": "same as used_image_num",
    "feature_quantize_method": "KL (default), ADMM, EMA",
    "weight_quantize_method": "MAX_ABS (default), ADMM",
    "feature_clamp_value": "largest activation code (default 127)",
    "weight_clamp_value": "largest weight code (default 127)",
    "batch_size": "calibration batch size (EMA updates once per batch)",
    "quant_bits": "bits (default 8)", "skip_quant_op_names": "ops kept in float",
    "input_type": "image (default) or sequence",
    "debug": "print per-tensor cosine similarity and overflow ratio after quantizing",
    "model": "informational (the tool ignores it too)",
    "inputs": "[{name, shape}] of the model inputs (informational: shapes come from the model)",
    "winogradOpt": "EMA Winograd ranges (ignored: not applicable to ptqconv's writers)",
}
HELP = f"""usage: ptqconv {USAGE}

MNN offline quantization on ptqconv: origin.mnn (float) -> quan.mnn (int8, as MNN's tool writes
it). JSON keys:
""" + "".join(f"  {k:<24}{v}\n" for k, v in KEYS.items()) + "\n" + SWITCH_HELP + "\n"


def read_json(path: str) -> dict:
    """Read the tool's JSON config as a dict; errors name the file and line."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise PtqconvError(f"{path}: config file not found") from None
    except json.JSONDecodeError as exc:
        raise PtqconvError(f"{path} (line {exc.lineno}): invalid JSON: {exc.msg}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PtqconvError(f"{path}: cannot read config: {exc}") from None
    if not isinstance(data, dict):
        raise PtqconvError(f"{path}: the config must be a JSON object")
    unknown = [k for k in data if k not in KEYS]
    if unknown:
        raise PtqconvError(f"{path}: unknown key '{unknown[0]}'{did_you_mean(unknown[0], KEYS)}")
    return data


def _get(data: dict, key: str, kind, path: str, default=None):
    value = data.get(key, default)
    if value is None:
        return None
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise PtqconvError(f"{path}: key '{key}' must be {getattr(kind, '__name__', kind)}, "
                           f"got {json.dumps(value)}")
    return value


def _numbers(data: dict, key: str, path: str):
    value = _get(data, key, list, path)
    if value is not None and not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                     for v in value):
        raise PtqconvError(f"{path}: key '{key}' must be a list of numbers")
    return [float(v) for v in value] if value is not None else None


def _clamp(data: dict, key: str, path: str):
    value = _get(data, key, int, path)
    if value is not None and not 0 < value <= 127:
        raise PtqconvError(f"{path}: {key} should be in (0, 127], got {value}")
    return value


def _crop_fraction(data: dict, path: str):
    """[h, w] of center_crop_h/center_crop_w, or None when both are 1 (no crop)."""
    fraction = [_get(data, key, float, path, 1.0) for key in ("center_crop_h", "center_crop_w")]
    for key, value in zip(("center_crop_h", "center_crop_w"), fraction):
        if not 0 < value <= 1:
            raise PtqconvError(f"{path}: {key} should be in (0, 1], got {value}")
    return None if fraction == [1.0, 1.0] else [float(v) for v in fraction]


def model_input_names(model: str) -> List[str]:
    """The input names of an .mnn model (read with ptqconv's mnn reader)."""
    from ptqconv.core.plugins import get_registry
    loaded = get_registry().reader("mnn").read([model], {})
    return [t.name for t in loaded.graph.inputs]


def build_config(src: str, dst: str, cfg_path: str) -> dict:
    """The ptqconv config of ``quantized src dst cfg_path``."""
    data = read_json(cfg_path)
    path = _get(data, "path", str, cfg_path)
    if not path:
        raise PtqconvError(f"{cfg_path}: calibration data path not set (key 'path')")
    base = os.path.dirname(os.path.abspath(cfg_path))
    folder = path if os.path.isabs(path) else os.path.join(base, path)
    if not os.path.isabs(path) and not os.path.exists(folder) and os.path.exists(path):
        folder = path  # relative to the working folder, as the tool reads it
    folder = os.path.abspath(folder)
    fmethod = resolve(TOOL, "feature_quantize_method",
                      _get(data, "feature_quantize_method", str, cfg_path, "KL"), FEATURE_METHODS)
    wmethod = resolve(TOOL, "weight_quantize_method",
                      _get(data, "weight_quantize_method", str, cfg_path, "MAX_ABS"),
                      WEIGHT_METHODS, kind="weight_quantizers")
    count = _get(data, "used_sample_num", int, cfg_path) or _get(data, "used_image_num", int,
                                                                  cfg_path)
    batch = _get(data, "batch_size", int, cfg_path)
    if batch is None and fmethod == "ema":
        batch = EMA_BATCH
    calibration = {"data": folder, "count": count if count and count > 0 else None,
                   "method": fmethod, "batch_size": batch}
    bits = _get(data, "quant_bits", int, cfg_path)
    fclamp, wclamp = _clamp(data, "feature_clamp_value", cfg_path), \
        _clamp(data, "weight_clamp_value", cfg_path)
    skip = _get(data, "skip_quant_op_names", list, cfg_path)
    quantize = {"weight_method": wmethod, "bits": bits, "skip": skip or None,
                "params": {"weight_clamp_value": wclamp} if wclamp and wclamp != 127 else None}
    if fclamp and fclamp != 127:
        quantize["activation_clamp"] = fclamp
    input_type = _get(data, "input_type", str, cfg_path, "image")
    config = {"input": absolute(src), "from": "mnn", "to": "mnn-int8", "output": absolute(dst),
              "backend": "mnn-cpu", "calibration": calibration, "quantize": quantize}
    if input_type == "sequence":
        names = model_input_names(src)
        calibration["data"] = [os.path.join(folder, "*", f"{n}.txt") for n in names]
        if len(names) == 1:
            calibration["data"] = calibration["data"][0]
    elif input_type == "image":
        fmt = _get(data, "format", str, cfg_path, "BGR")
        if fmt not in FORMATS:
            raise PtqconvError(f"{cfg_path}: format '{fmt}' is not one of {', '.join(FORMATS)}")
        width, height = _get(data, "width", int, cfg_path), _get(data, "height", int, cfg_path)
        if (width is None) != (height is None):
            raise PtqconvError(f"{cfg_path}: set both 'width' and 'height' (or neither)")
        config["preprocess"] = prune({"pixel": FORMATS[fmt],
                                      "size": [height, width] if width else None,
                                      "mean": _numbers(data, "mean", cfg_path),
                                      "norm": _numbers(data, "normal", cfg_path),
                                      "crop_fraction": _crop_fraction(data, cfg_path)})
    else:
        raise PtqconvError(f"{cfg_path}: input_type '{input_type}' is not 'image' or 'sequence'")
    if _get(data, "debug", bool, cfg_path, False):
        config["report"] = absolute(dst + ".debug.md")
    return prune(config)


def run(argv) -> int:
    """``ptqconv quantized src.mnn dst.mnn config.json``; see the module docstring."""
    if not argv or argv[0] in ("-h", "--help"):
        print(HELP, end="")
        return 0
    rest, flags = take_flags(argv, *SWITCHES)
    if len(rest) != 3:
        raise PtqconvError(f"{TOOL}: expected 3 arguments, got {len(rest)} (usage: {USAGE})")
    config = apply_policy(build_config(*rest), flags)
    result = run_or_print(config, [TOOL] + list(argv), flags)
    if result is not None:
        if "report" in config:
            print(f"debug: per-layer cosine similarity and overflow ratio in {config['report']}")
        print("Quantize model done!")
    return 0


@hookimpl
def register_commands(register):
    register(Command(TOOL, run, "MNN's quantized.out: float .mnn + JSON config -> int8 .mnn"))
