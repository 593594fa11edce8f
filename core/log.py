"""Step log with elapsed times and the progress bar used for long work."""
from __future__ import annotations

import os
import sys
import time

from tqdm import tqdm

_START = time.perf_counter()
QUIET = False


def step(message: str) -> None:
    """Print ``[  12.3s] message`` to stderr (unless quiet)."""
    if not QUIET:
        print(f"[{time.perf_counter() - _START:7.2f}s] {message}", file=sys.stderr, flush=True)


def progress(total: int, desc: str, unit: str = "img"):
    """A tqdm bar on stderr showing rate and ETA; hidden when stderr is not a terminal
    (set PTQCONV_PROGRESS=1 to force it)."""
    force = os.environ.get("PTQCONV_PROGRESS") == "1"
    disable = QUIET or (not force and not sys.stderr.isatty())
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, file=sys.stderr,
                dynamic_ncols=True, leave=False)
