"""The YAML/dict configuration, validated with pydantic (unknown keys and wrong types are errors)."""
from __future__ import annotations

import os
from typing import Dict, List, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ptqconv.core.errors import PtqconvError, did_you_mean


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Preprocess(_Strict):
    """How an image becomes an input tensor: ``(pixel - mean) * norm`` in the chosen order."""

    pixel: Literal["RGB", "BGR", "GRAY", "RGBA", "BGRA"] = "RGB"
    resize_short: Optional[int] = Field(None, gt=0)
    interpolation: Literal["bilinear", "bicubic", "nearest", "area", "lanczos"] = "bilinear"
    size: Optional[List[int]] = None
    mean: Optional[List[float]] = None
    norm: Optional[List[float]] = None
    # pad value (one, or one per channel); keep aspect ratio and pad to ``size``
    letterbox: Optional[Union[float, List[float]]] = None
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    # [h, w] fractions of the decoded image kept by a center crop before the resize (MNN's
    # center_crop_h/center_crop_w)
    crop_fraction: Optional[List[float]] = None
    # YOLOv5 Focus after normalizing: C x H x W -> 4C x H/2 x W/2, slices in the order
    # (even row, even col), (odd, even), (even, odd), (odd, odd) (Tengine's -k)
    space_to_depth: bool = False

    @field_validator("crop_fraction")
    @classmethod
    def _fraction(cls, v):
        if v is not None and (len(v) != 2 or not all(0 < f <= 1 for f in v)):
            raise ValueError("crop_fraction must be [height, width] fractions in (0, 1]")
        return v

    @field_validator("size")
    @classmethod
    def _size(cls, v):
        if v is not None and (len(v) != 2 or min(v) <= 0):
            raise ValueError("size must be [height, width] with positive values")
        return v


class Calibration(_Strict):
    """Calibration data and method."""

    data: Optional[Union[str, List[str]]] = None
    count: Optional[int] = Field(None, gt=0)
    method: str = "kl"
    params: Dict[str, Union[float, int, str, bool]] = Field(default_factory=dict)
    batch_size: int = Field(1, gt=0)
    threads: int = Field(0, ge=0)
    labels: Optional[str] = None
    refine: Literal["cosine", "none"] = "cosine"
    refine_inputs: int = Field(32, gt=0)


class AutoMixed(_Strict):
    """Automatic mixed precision: keep the fewest layers float so the output meets ``budget``
    (top1: allowed drop in points; cosine: minimum output cosine; sqnr: minimum output dB),
    measured on the last ``holdout`` fraction of the calibration inputs (not calibrated on)."""

    metric: Literal["cosine", "sqnr", "top1"] = "top1"
    budget: float
    holdout: float = Field(0.5, gt=0, lt=1)
    max_float: float = Field(0.2, ge=0, le=1)  # search bound, as a fraction of the int8 layers


class Quantize(_Strict):
    """Weight quantization and which layers to keep in float."""

    weights: Literal["per-channel", "per-tensor", "mix"] = "per-channel"
    weight_method: str = "minmax"
    bits: int = Field(8, ge=2, le=8)
    weight_bits: Optional[int] = Field(None, ge=2, le=8)
    activation_clamp: Optional[int] = Field(None, ge=1, le=127)  # largest activation code
    activation_bits: Optional[int] = Field(None, ge=2, le=8)
    skip: List[str] = Field(default_factory=list)
    # None = auto: on where the backend's int8 activations are signed-only (ncnn, MNN, TNN,
    # Tengine), off where never-negative tensors get unsigned codes (onnxruntime)
    bias_correction: Optional[bool] = None
    equalize: bool = False  # cross-layer equalization pre-pass (core/equalize.py)
    equalize_clip: bool = False  # also through Clip(0, b), rewritten as per-channel Min + Relu
    unsigned_activations: bool = True  # where the backend runs them (onnxruntime, tengine)
    # backends without zero points (ncnn): also centre inputs of padded convolutions through an
    # explicit Pad layer (full 8-bit codes on depthwise inputs; a padding layer per such conv)
    centre_padded: bool = False
    params: Dict[str, Union[float, int, str, bool]] = Field(default_factory=dict)
    auto_mixed: Optional[AutoMixed] = None


class Config(_Strict):
    """One conversion job."""

    input: List[str] = Field(default_factory=list)
    output: Optional[Union[str, List[str]]] = None  # a list names the companion files too
    from_format: Optional[str] = Field(None, alias="from")
    to: Optional[str] = None
    backend: Optional[str] = None
    save_table: Optional[str] = None
    load_table: Optional[str] = None
    report: Optional[str] = None  # diagnosis report (.md or .html) of the quantized model
    calibration: Calibration = Field(default_factory=Calibration)
    preprocess: Union[Preprocess, List[Preprocess]] = Field(default_factory=Preprocess)
    quantize: Quantize = Field(default_factory=Quantize)
    options: Dict[str, Union[float, int, str, bool, List[int], List[List[int]]]] = Field(
        default_factory=dict)

    @field_validator("input", mode="before")
    @classmethod
    def _input_list(cls, v):
        return [v] if isinstance(v, str) else v

    def preprocess_for(self, index: int) -> Preprocess:
        """Preprocessing of model input ``index`` (one block for all, or one per input)."""
        if isinstance(self.preprocess, list):
            if index >= len(self.preprocess):
                raise PtqconvError(f"config: 'preprocess' lists {len(self.preprocess)} entries but "
                                   f"the model has input #{index + 1}")
            return self.preprocess[index]
        return self.preprocess

    def reader_options(self) -> Dict[str, object]:
        """The ``options`` a reader gets: the config's, plus under :data:`PREPROCESS_SHAPES`
        the input shapes the image preprocessing produces (when it fixes a size), which readers
        of formats without stored input shapes (TorchScript) may use as a default."""
        options = dict(self.options)
        blocks = self.preprocess if isinstance(self.preprocess, list) else [self.preprocess]
        shapes = [_preprocess_shape(b) for b in blocks]
        if shapes and all(shapes):
            options.setdefault(PREPROCESS_SHAPES, shapes)
        return options


PREPROCESS_SHAPES = "_preprocess_shapes"
_CHANNELS = {"RGB": 3, "BGR": 3, "GRAY": 1, "RGBA": 4, "BGRA": 4}


def _preprocess_shape(pre: Preprocess) -> Optional[List[int]]:
    """Batch-1 tensor shape an image gets from ``pre`` (None when it sets no size)."""
    if not pre.size:
        return None
    h, w = pre.size
    c = _CHANNELS[pre.pixel]
    return [1, c, h, w] if pre.layout == "NCHW" else [1, h, w, c]


def _model_fields(model_cls, loc):
    """Return the field names valid at the location ``loc`` (for did-you-mean)."""
    cls = model_cls
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = cls.model_fields.get(part) if hasattr(cls, "model_fields") else None
        if field is None:
            return []
        ann = field.annotation
        candidates = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type)]
        nested = [a for a in candidates if issubclass(a, BaseModel)]
        if not nested:
            for a in getattr(ann, "__args__", ()):
                nested += [b for b in getattr(a, "__args__", ()) if isinstance(b, type)
                           and issubclass(b, BaseModel)]
        if not nested:
            return []
        cls = nested[0]
    names = []
    for name, f in cls.model_fields.items():
        names.append(f.alias or name)
    return names


_MODEL_NAMES = {"Preprocess", "Calibration", "Quantize", "AutoMixed", "Config"}


def _clean_loc(loc):
    return tuple(p for p in loc if not (isinstance(p, str) and (
        p in _MODEL_NAMES or p.startswith(("list[", "function", "str", "int", "float", "bool")))))


def _format_error(exc: ValidationError, source: str) -> PtqconvError:
    errors = [(_clean_loc(e["loc"]), e) for e in exc.errors()]
    # a union reports every alternative: keep the most specific location only
    errors = [(loc, e) for loc, e in errors
              if not any(len(other) > len(loc) and other[:len(loc)] == loc for other, _ in errors)]
    lines = []
    for loc, err in errors:
        key = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            hint = did_you_mean(loc[-1], _model_fields(Config, loc))
            lines.append(f"unknown config key '{key}'{hint}")
        else:
            lines.append(f"config key '{key}': {err['msg']}")
    return PtqconvError(f"{source}: " + "; ".join(dict.fromkeys(lines)))


def load_config(config=None, **overrides) -> Config:
    """Build a :class:`Config` from a dict, a YAML path or a Config, then apply ``overrides``.

    Overrides use dotted keys (``{"calibration.method": "kl"}``); None values are ignored.
    Relative paths in a YAML file are taken relative to the file's folder.
    """
    source = "config"
    if config is None:
        data = {}
    elif isinstance(config, Config):
        data = config.model_dump(by_alias=True, exclude_unset=True)
    elif isinstance(config, dict):
        data = dict(config)
    else:
        source = str(config)
        data = _read_yaml(source)
        _resolve_paths(data, os.path.dirname(os.path.abspath(source)))
    for key, value in overrides.items():
        if value is None:
            continue
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise PtqconvError(f"{source}: config key '{p}' must be a mapping")
        node[parts[-1]] = value
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise _format_error(exc, source) from None


def _read_yaml(path):
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise PtqconvError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PtqconvError(f"{path}: cannot read config: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise PtqconvError(f"{path}{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PtqconvError(f"{path}: the config must be a YAML mapping")
    return data


def _resolve_paths(data, base):
    def fix(p):
        if not isinstance(p, str) or os.path.isabs(p) or p == "":
            return p
        return os.path.normpath(os.path.join(base, p))
    if "input" in data:
        data["input"] = [fix(p) for p in data["input"]] if isinstance(data["input"], list) \
            else fix(data["input"])
    for key in ("output", "save_table", "load_table", "report"):
        if key in data:
            data[key] = [fix(p) for p in data[key]] if isinstance(data[key], list) \
                else fix(data[key])
    cal = data.get("calibration")
    if isinstance(cal, dict):
        if isinstance(cal.get("data"), list):
            cal["data"] = [fix(p) for p in cal["data"]]
        elif "data" in cal:
            cal["data"] = fix(cal["data"])
        if "labels" in cal:
            cal["labels"] = fix(cal["labels"])
