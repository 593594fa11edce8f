"""Calibration data: finding inputs (folder, list file, glob) and turning them into tensors.

Images (JPEG/PNG/BMP) are decoded with Pillow and preprocessed as the seed tools describe it:
pixel order, center crop by fraction, resize (whole image, shorter side, or letterbox), center
crop, ``(x - mean) * norm``, space-to-depth.
Raw tensor files (``.npy``, ``.txt``, ``.bin``; see :mod:`ptqconv.core.inputs`) are used as they
are. In a folder, ``.txt`` files are samples only when the folder holds no image; a ``.txt`` given
directly is a list file unless it starts with a number.
"""
from __future__ import annotations

import glob
import os
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from ptqconv.core.errors import PtqconvError
from ptqconv.core.inputs import (TENSOR_EXTS, fit_shaped, load_tensor_input, looks_like_tensor_text,
                                 read_npy)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
             "area": Image.BOX, "lanczos": Image.LANCZOS}


def _is_sample(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTS + TENSOR_EXTS)


def list_samples(spec: str, count: Optional[int] = None) -> List[str]:
    """Resolve a directory, a list file (one path per line) or a glob to sorted sample paths;
    keep the first ``count``."""
    if os.path.isdir(spec):
        names = [f for f in os.listdir(spec) if _is_sample(f)
                 and os.path.isfile(os.path.join(spec, f))]
        if any(f.lower().endswith(IMAGE_EXTS) for f in names):  # labels.txt beside images
            names = [f for f in names if not f.lower().endswith(".txt")]
        paths = sorted(os.path.join(spec, f) for f in names)
    elif os.path.isfile(spec) and (not _is_sample(spec) or (
            spec.lower().endswith(".txt") and not looks_like_tensor_text(spec))):
        base = os.path.dirname(os.path.abspath(spec))
        try:
            with open(spec, "r", encoding="utf-8") as f:
                lines = [ln.strip() for ln in f]
        except (OSError, UnicodeDecodeError) as exc:
            raise PtqconvError(f"{spec}: cannot read list file: {exc}") from None
        paths = [_listed_path(ln, base) for ln in lines if ln and not ln.startswith("#")]
    elif os.path.isfile(spec):
        paths = [spec]
    else:
        paths = sorted(p for p in glob.glob(spec) if _is_sample(p))
        if not paths and not any(ch in spec for ch in "*?["):
            raise PtqconvError(f"{spec}: calibration data not found")
    if count is not None:
        paths = paths[:count]
    if not paths:
        raise PtqconvError(f"{spec}: calibration set is empty (no .jpg/.png/.bmp/.npy/.txt/.bin "
                           f"files)")
    return paths


def _listed_path(line: str, base: str) -> str:
    """A list file's entry: relative to the list's folder, or to the working folder when only
    that exists (lists made with ``find images/ > list.txt``, as the ncnn docs do)."""
    if os.path.isabs(line):
        return line
    beside = os.path.join(base, line)
    if not os.path.exists(beside) and os.path.exists(line):
        return os.path.abspath(line)
    return beside


def load_image(path: str, pre, hw: Sequence[int]) -> np.ndarray:
    """Decode and preprocess one image into a float32 CHW (or HWC) array of spatial size ``hw``."""
    try:
        with Image.open(path) as img:
            img.load()
            mode = {"GRAY": "L", "RGBA": "RGBA", "BGRA": "RGBA"}.get(pre.pixel, "RGB")
            img = img.convert(mode)
    except FileNotFoundError:
        raise PtqconvError(f"{path}: image not found") from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise PtqconvError(f"{path}: cannot decode image: {exc}") from None
    if pre.crop_fraction is not None:
        img = _crop_fraction(img, pre.crop_fraction)
    if pre.space_to_depth:
        hw = _even_size(hw, path)
    img = _resize(img, pre, hw)
    x = np.asarray(img, dtype=np.float32)
    if x.ndim == 2:
        x = x[:, :, None]
    if pre.pixel in ("BGR", "BGRA"):
        x = x[:, :, [2, 1, 0] + ([3] if x.shape[2] == 4 else [])]
    if pre.mean is not None:
        x = x - _per_channel(pre.mean, x.shape[2], "mean")
    if pre.norm is not None:
        x = x * _per_channel(pre.norm, x.shape[2], "norm")
    if pre.space_to_depth:
        x = np.concatenate([x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]], axis=2)
    if pre.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x, dtype=np.float32)


def _crop_fraction(img, fraction):
    """The centered ``fraction`` = [h, w] of the image (sizes truncated, at least one pixel)."""
    ch = max(1, int(img.height * fraction[0]))
    cw = max(1, int(img.width * fraction[1]))
    top, left = (img.height - ch) // 2, (img.width - cw) // 2
    return img.crop((left, top, left + cw, top + ch))


def _even_size(hw, path):
    if int(hw[0]) % 2 or int(hw[1]) % 2:
        raise PtqconvError(f"{path}: space_to_depth needs an even image size, got "
                           f"{int(hw[0])}x{int(hw[1])}")
    return hw


def _per_channel(values, channels, key):
    v = np.asarray(values, dtype=np.float32)
    if v.size == 1:
        return v.reshape(1)
    if v.size != channels:
        raise PtqconvError(f"config key 'preprocess.{key}' has {v.size} values but the image has "
                           f"{channels} channels")
    return v


def _resize(img, pre, hw):
    h, w = int(hw[0]), int(hw[1])
    resample = _RESAMPLE[pre.interpolation]
    if pre.letterbox is not None:
        scale = min(w / img.width, h / img.height)
        nw, nh = max(1, round(img.width * scale)), max(1, round(img.height * scale))
        resized = img.resize((nw, nh), resample)
        fill = _pad_fill(pre.letterbox, img.mode)
        canvas = Image.new(img.mode, (w, h), fill)
        canvas.paste(resized, ((w - nw) // 2, (h - nh) // 2))
        return canvas
    if pre.resize_short:
        s = pre.resize_short
        if img.width <= img.height:
            nw, nh = s, max(1, round(img.height * s / img.width))
        else:
            nw, nh = max(1, round(img.width * s / img.height)), s
        if (nw, nh) != img.size:
            img = img.resize((nw, nh), resample)
        top, left = round((img.height - h) / 2), round((img.width - w) / 2)
        if top < 0 or left < 0:
            raise PtqconvError(f"preprocess: crop {h}x{w} is larger than the resized image "
                               f"{img.height}x{img.width}")
        return img.crop((left, top, left + w, top + h))
    if img.size != (w, h):
        img = img.resize((w, h), resample)
    return img


def _pad_fill(value, mode):
    """Pillow fill colour for a letterbox pad ``value`` (one number or one per channel)."""
    values = [int(round(v)) for v in (value if isinstance(value, list) else [value])]
    bands = len(mode)
    if len(values) == 1:
        values = values * bands
    if len(values) != bands:
        raise PtqconvError(f"config key 'preprocess.letterbox' has {len(values)} values but the "
                           f"image has {bands} channels")
    return values[0] if bands == 1 else tuple(values)


def load_tensor(path: str, expected_shape: Sequence[int]) -> np.ndarray:
    """Load a ``.npy`` tensor (no pickle) and check it fits ``expected_shape`` (batch axis optional)."""
    x = read_npy(path)
    fit_shaped(x, path, expected_shape)
    return x


class CalibrationData:
    """Streams batches ``{input name: array}`` for a model's inputs.

    ``sources[k]`` is the list of sample files for input ``k``; sample ``i`` of every list is fed
    together. Nothing is kept in memory beyond the current batch.
    """

    def __init__(self, inputs, sources: List[List[str]], preprocess: List, batch_size: int = 1):
        if len(sources) != len(inputs):
            raise PtqconvError(f"the model has {len(inputs)} input(s) ({', '.join(t.name for t in inputs)})"
                               f" but calibration data was given for {len(sources)}")
        n = len(sources[0])
        for k, s in enumerate(sources):
            if len(s) != n:
                raise PtqconvError(f"calibration data for input '{inputs[k].name}' has {len(s)} "
                                   f"samples, but input '{inputs[0].name}' has {n}")
        self.inputs, self.sources, self.preprocess = inputs, sources, preprocess
        self.batch_size = batch_size

    def __len__(self):
        return len(self.sources[0])

    def _sample(self, k: int, path: str) -> np.ndarray:
        info = self.inputs[k]
        shape = info.static_shape() or tuple(d if isinstance(d, int) and d > 0 else 1
                                             for d in (info.shape or ()))
        if path.lower().endswith(TENSOR_EXTS):
            return load_tensor_input(path, shape, info.name)
        pre = self.preprocess[k]
        hw = pre.size or _spatial(shape, pre.layout, info.name)
        if pre.space_to_depth and not pre.size:  # the model input holds half the image size
            hw = (2 * hw[0], 2 * hw[1])
        x = load_image(path, pre, hw)
        if shape and len(shape) == 4 and tuple(x.shape) != tuple(shape[1:]):
            raise PtqconvError(f"{path}: preprocessed image has shape {tuple(x.shape)} but model "
                               f"input '{info.name}' expects {tuple(shape[1:])}")
        return x[None]

    def batches(self) -> Iterator[Dict[str, np.ndarray]]:
        """Yield feeds of up to ``batch_size`` samples each."""
        n = len(self)
        for start in range(0, n, self.batch_size):
            feed = {}
            for k, info in enumerate(self.inputs):
                arrays = [self._sample(k, p) for p in self.sources[k][start:start + self.batch_size]]
                feed[info.name] = np.concatenate(arrays, axis=0)
            yield feed


def _spatial(shape, layout, name):
    if len(shape) != 4:
        raise PtqconvError(f"model input '{name}' has shape {shape}; set 'preprocess.size' for images")
    return (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
