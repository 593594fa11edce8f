"""Finding and running the pnnx executable shipped in the ``pnnx`` wheel.

The ``pnnx`` Python package imports torch in its ``__init__``, so it is never imported: the
executable is located through the installed distribution's file list and run as a subprocess
(which also keeps a crash of the native converter out of this process).
"""
from __future__ import annotations

import os
import re
import subprocess
from importlib import metadata
from typing import List, Optional

from ptqconv.core.errors import PtqconvError

ENV_VAR = "PTQCONV_PNNX"  # path of a pnnx executable to use instead of the wheel's
INSTALL_HINT = ("install it without torch: pip install --no-deps pnnx "
                "(or set PTQCONV_PNNX to a pnnx executable)")
_EXE_NAMES = ("pnnx", "pnnx.exe")


class PnnxMissing(PtqconvError):
    """No usable pnnx executable."""


def _from_distribution() -> Optional[str]:
    try:
        files = metadata.files("pnnx") or []
    except metadata.PackageNotFoundError:
        return None
    for f in files:  # the binary sits in the package folder: pnnx/pnnx (the script is bin/pnnx)
        parts = getattr(f, "parts", ())
        if len(parts) == 2 and parts[0] == "pnnx" and parts[1] in _EXE_NAMES:
            return str(f.locate())
    return None


def find_pnnx() -> str:
    """Path of the pnnx executable (``$PTQCONV_PNNX`` or the ``pnnx`` wheel's); raises
    :class:`PnnxMissing` saying how to install it."""
    override = os.environ.get(ENV_VAR)
    if override:
        if not (os.path.isfile(override) and os.access(override, os.X_OK)):
            raise PnnxMissing(f"{ENV_VAR}={override} is not an executable file")
        return override
    path = _from_distribution()
    if path is None:
        raise PnnxMissing(f"the torchscript reader needs the pnnx converter, which is not "
                          f"installed; {INSTALL_HINT}")
    if not os.path.isfile(path):
        raise PnnxMissing(f"the pnnx package is installed but its executable {path} is missing; "
                          f"reinstall: pip install --force-reinstall --no-deps pnnx")
    if not os.access(path, os.X_OK):
        raise PnnxMissing(f"{path} is not executable (chmod +x it, or reinstall pnnx)")
    return path


def pnnx_status() -> str:
    """One phrase for ``ptqconv plugins``: which pnnx is used, or why the reader is unusable."""
    try:
        path = find_pnnx()
    except PtqconvError as exc:
        return f"UNUSABLE: {exc}"
    try:
        version = metadata.version("pnnx")
    except metadata.PackageNotFoundError:
        version = "?"
    return f"usable (pnnx {version if not os.environ.get(ENV_VAR) else path})"


# Lines of pnnx output that carry no diagnosis: option echo, pass banners, libtorch stack frames
# and the "how to export" boilerplate it prints after every load failure.
_NOISE = re.compile(r"^(frame #\d+|#{5,}|[a-z0-9_]+ = |-{10,}|import |net = |x = torch|mod = |"
                    r"mod\.save|Please export|Exception raised from|inline module|get inputshape|"
                    r"\s*$)")


def summarize_output(text: str, lines: int = 3, width: int = 300) -> str:
    """The last ``lines`` meaningful lines of pnnx's output, joined into one line."""
    kept = [ln.strip() for ln in text.splitlines() if not _NOISE.match(ln)]
    kept = [re.sub(r"\x1b\[[0-9;]*m", "", ln)[:width] for ln in kept if ln.strip()]
    return " | ".join(kept[-lines:]) if kept else "(no output)"


def run_pnnx(exe: str, model: str, workdir: str, outputs: dict, extra: List[str],
             timeout: float) -> subprocess.CompletedProcess:
    """Run pnnx on ``model`` in ``workdir`` writing the files named in ``outputs``
    (pnnx key -> path); returns the finished process with stdout+stderr as text."""
    cmd = [exe, model] + [f"{k}={v}" for k, v in outputs.items()] + list(extra)
    try:
        return subprocess.run(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, timeout=timeout, check=False, text=True,
                              errors="replace")
    except subprocess.TimeoutExpired:
        raise PtqconvError(f"{model}: pnnx did not finish within {timeout:.0f} s "
                           f"(option pnnx_timeout=SECONDS)") from None
    except OSError as exc:
        raise PnnxMissing(f"cannot run pnnx ({exe}): {exc}") from None
