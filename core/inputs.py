"""Raw tensor files as model inputs: ``.npy``, ``.txt`` and ``.bin``.

* ``.npy``: a numpy array file (read without pickle); its shape must fit the model input, with or
  without the batch axis.
* ``.txt``: decimal numbers separated by white space (TNN's one value per line, NCHW order; MNN's
  sequence files), reshaped to the model input.
* ``.bin``: raw little-endian float32 values (MindSpore Lite's preprocessed calibration files),
  reshaped to the model input.

A flat file holding a whole number of samples is read as that many samples (a batch).
Every malformed file is a :class:`PtqconvError` naming the file; a tensor that does not fit the
model input names both shapes.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from ptqconv.core.errors import PtqconvError

TENSOR_EXTS = (".npy", ".txt", ".bin")


def is_tensor_file(path: str) -> bool:
    """True when ``path`` names a raw tensor file by its ending."""
    return path.lower().endswith(TENSOR_EXTS)


def looks_like_tensor_text(path: str) -> bool:
    """True when the text file ``path`` starts with a number (a ``.txt`` tensor), False when it
    starts with anything else (e.g. a list of file paths) or is empty."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return False
    tokens = head.split()
    if not tokens:
        return False
    try:
        float(tokens[0])
    except ValueError:
        return False
    return True


def read_text_values(path: str) -> np.ndarray:
    """Read every white-space separated number of a text file as a flat float32 array."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise PtqconvError(f"{path}: tensor file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PtqconvError(f"{path}: cannot read tensor text file: {exc}") from None
    try:
        values = np.array(text.split(), dtype=np.float32)
    except ValueError:
        for k, line in enumerate(text.splitlines(), 1):
            for token in line.split():
                try:
                    float(token)
                except ValueError:
                    raise PtqconvError(f"{path} (line {k}): '{token[:40]}' is not a number") \
                        from None
        raise PtqconvError(f"{path}: not a text file of numbers") from None
    if values.size == 0:
        raise PtqconvError(f"{path}: tensor text file holds no numbers")
    return values


def read_bin_values(path: str) -> np.ndarray:
    """Read a raw little-endian float32 file as a flat float32 array."""
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise PtqconvError(f"{path}: tensor file not found") from None
    if size == 0 or size % 4:
        raise PtqconvError(f"{path}: {size} bytes is not a whole number of float32 values")
    try:
        return np.fromfile(path, dtype="<f4").astype(np.float32)
    except OSError as exc:
        raise PtqconvError(f"{path}: cannot read raw float32 file: {exc}") from None


def read_npy(path: str) -> np.ndarray:
    """Read a ``.npy`` array without pickle, as float32."""
    try:
        x = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise PtqconvError(f"{path}: tensor file not found") from None
    except (ValueError, OSError, EOFError) as exc:
        raise PtqconvError(f"{path}: not a readable .npy tensor: {exc}") from None
    if not isinstance(x, np.ndarray):
        raise PtqconvError(f"{path}: .npy file holds no array")
    try:
        return np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise PtqconvError(f"{path}: .npy array is not numeric: {exc}") from None


def fit_shaped(x: np.ndarray, path: str, shape: Sequence[int], name: str = "") -> np.ndarray:
    """Return the shaped array ``x`` with a batch axis, checked against the model input ``shape``
    (batch first): ``shape[1:]`` adds the batch axis, ``(n,) + shape[1:]`` is kept."""
    exp = tuple(shape)
    if tuple(x.shape) == exp[1:]:
        return x[None]
    if x.ndim == len(exp) and tuple(x.shape[1:]) == exp[1:]:
        return x
    raise PtqconvError(f"{path}: tensor shape {tuple(x.shape)} does not fit model input"
                       f"{_named(name)} shape {exp}")


def fit_flat(values: np.ndarray, path: str, shape: Optional[Sequence[int]],
             name: str = "") -> np.ndarray:
    """Reshape flat ``values`` to the model input ``shape`` (batch first): one sample, or a whole
    number of samples as a batch."""
    exp = tuple(shape or ())
    if not exp or any(not isinstance(d, int) or d <= 0 for d in exp):
        raise PtqconvError(f"{path}: model input{_named(name)} has shape {exp or 'unknown'}; raw "
                           f"tensor files need a fixed input shape")
    per_sample = int(np.prod(exp[1:])) if len(exp) > 1 else 1
    n = values.size
    if n == per_sample:
        return values.reshape((1,) + exp[1:])
    if per_sample and n % per_sample == 0 and len(exp) > 1:
        return values.reshape((n // per_sample,) + exp[1:])
    raise PtqconvError(f"{path}: {n} values do not fit model input{_named(name)} shape {exp} "
                       f"({per_sample} values per sample)")


def load_tensor_input(path: str, shape: Sequence[int], name: str = "") -> np.ndarray:
    """Load one raw tensor file for a model input of ``shape``; returns a batched float32 array."""
    lower = path.lower()
    if lower.endswith(".npy"):
        return fit_shaped(read_npy(path), path, shape, name)
    if lower.endswith(".txt"):
        return fit_flat(read_text_values(path), path, shape, name)
    if lower.endswith(".bin"):
        return fit_flat(read_bin_values(path), path, shape, name)
    raise PtqconvError(f"{path}: not a tensor file (expected {', '.join(TENSOR_EXTS)})")


def _named(name: str) -> str:
    return f" '{name}'" if name else ""
