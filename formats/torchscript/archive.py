"""Checks on a TorchScript file's zip container, without unpickling anything.

``torch.jit.save`` writes a zip archive with one top folder holding ``code/`` (the TorchScript
source), ``data.pkl``/``constants.pkl`` and tensor storages; ``torch.save`` checkpoints have the
same container but no ``code/``. Only the zip directory and CRCs are read here.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass

from ptqconv.core.errors import ModelFormatError, PtqconvError

# Stored (uncompressed) entries are what torch writes; refuse archives whose declared content is
# far larger than the file (a zip bomb would make the CRC check run for ever).
MAX_EXPANSION = 64


@dataclass(frozen=True)
class ArchiveInfo:
    """What the zip directory says: the top folder and whether example inputs were traced."""

    prefix: str
    traced_inputs: bool


def _top_folders(names):
    return {n.split("/", 1)[0] for n in names if "/" in n}


def _torchscript_prefix(names):
    """The top folder that holds ``code/`` and a pickle of constants or data, or None."""
    for prefix in sorted(_top_folders(names)):
        has_code = any(n.startswith(prefix + "/code/") for n in names)
        if has_code and ({prefix + "/constants.pkl", prefix + "/data.pkl"} & set(names)):
            return prefix
    return None


def sniff_torchscript(path: str) -> bool:
    """True when ``path`` is a zip archive laid out as ``torch.jit.save`` writes it."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as zf:
            return _torchscript_prefix(zf.namelist()) is not None
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def inspect_archive(path: str) -> ArchiveInfo:
    """Check that ``path`` is an intact TorchScript archive (zip directory, layout, CRCs).

    Returns its :class:`ArchiveInfo`; raises ModelFormatError naming what is wrong.
    """
    try:
        size = os.path.getsize(path)
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise PtqconvError(f"{path}: model file not found") from None
    except zipfile.BadZipFile as exc:
        raise ModelFormatError(path, None, f"not a TorchScript file: not a readable zip archive "
                               f"({exc}); TorchScript models are saved by torch.jit.save") from None
    except (OSError, ValueError) as exc:
        raise ModelFormatError(path, None, f"not a TorchScript file: {exc}") from None
    with zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        prefix = _torchscript_prefix(names)
        if prefix is None:
            hint = (" - it looks like a torch.save() checkpoint or state_dict"
                    if any(n.endswith("/data.pkl") for n in names) else "")
            raise ModelFormatError(path, None, "zip archive without TorchScript code (no "
                                   f"'<folder>/code/' entries){hint}; export the model with "
                                   "torch.jit.trace(model, example).save(path)")
        declared = sum(i.file_size for i in infos)
        if declared > MAX_EXPANSION * max(size, 1) + (1 << 20):
            raise ModelFormatError(path, None, f"zip entries declare {declared} bytes in a "
                                   f"{size}-byte file; refusing to expand it")
        for info in infos:
            if info.header_offset + info.compress_size > size:
                raise ModelFormatError(path, f"offset {info.header_offset}", f"zip entry "
                                       f"'{info.filename}' runs past the end of the file "
                                       f"(truncated?)")
        try:
            bad = zf.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
            raise ModelFormatError(path, None, f"damaged zip archive: {exc}") from None
        if bad is not None:
            raise ModelFormatError(path, f"entry {bad}", "damaged: its CRC check failed")
        return ArchiveInfo(prefix, prefix + "/traced_inputs.pkl" in names)
