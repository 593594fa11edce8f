"""Atomic output: write to temporary files beside the targets, rename all on success."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from typing import List, Sequence

from ptqconv.core.errors import PtqconvError


def check_not_input(outputs: Sequence[str], inputs: Sequence[str]) -> None:
    """Refuse to write an output over one of the inputs."""
    ins = {os.path.realpath(p) for p in inputs}
    for out in outputs:
        if os.path.realpath(out) in ins:
            raise PtqconvError(f"{out}: refusing to overwrite an input file")


@contextmanager
def atomic_outputs(paths: Sequence[str]):
    """Yield temporary paths for ``paths``; on success rename each onto its target, on any error
    delete them so nothing half-written is left."""
    temps: List[str] = []
    try:
        for p in paths:
            folder = os.path.dirname(os.path.abspath(p))
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as exc:
                raise PtqconvError(f"{p}: cannot create output folder: {exc.strerror}") from None
            fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(p) + ".", suffix=".tmp",
                                       dir=folder)
            os.close(fd)
            temps.append(tmp)
        yield temps
        mode = 0o666 & ~_umask()
        for tmp, p in zip(temps, paths):
            os.chmod(tmp, mode)  # mkstemp creates 0600; outputs get the usual permissions
            os.replace(tmp, p)
        temps = []
    finally:
        for tmp in temps:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_outputs([path]) as (tmp,):
        with open(tmp, "wb") as f:
            f.write(data)


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))
