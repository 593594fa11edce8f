"""Run the ``ptqconv`` console script in a subprocess and check the one-line-error contract."""
import os
import subprocess
import sys


def run_cli(*args, env=None, cwd=None):
    """Run ``python -m ptqconv.core.cli ARGS``; returns the CompletedProcess (text)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "ptqconv.core.cli", *map(str, args)],
                          capture_output=True, text=True, env=full_env, cwd=cwd, timeout=600)


def assert_one_line_error(proc, *fragments):
    """Non-zero exit, no traceback, and an error line on stderr containing ``fragments``."""
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ptqconv: error:")]
    assert len(errors) == 1, proc.stderr
    for frag in fragments:
        assert frag in errors[0], errors[0]
    return errors[0]
