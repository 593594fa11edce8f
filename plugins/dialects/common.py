"""What every seed-tool dialect shares: value parsing, method-name mapping, printing the
equivalent ptqconv YAML, and running the job through :func:`ptqconv.core.convert.convert`.

A dialect only translates: it builds a plain config dict (the same keys a YAML file holds) and
hands it to the conversion job, so ``--print-config`` output run with ``ptqconv -c`` does exactly
what the dialect command does.
"""
from __future__ import annotations

import argparse
import os
import shlex
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Union

import yaml

from ptqconv.core import log
from ptqconv.core.config import load_config
from ptqconv.core.errors import PtqconvError, did_you_mean

PRINT_CONFIG = "--print-config"
REFINE = "--refine"  # the default since the check lowered every KL-based dialect's output KL
SEED_EXACT = "--seed-exact"
BIAS_CORRECTION = "--bias-correction"
QUIET = ("-q", "--quiet")
SWITCHES = (PRINT_CONFIG, REFINE, SEED_EXACT, BIAS_CORRECTION) + QUIET
SWITCH_HELP = ("ptqconv switches: --print-config prints the equivalent ptqconv YAML and exits; "
               "by default ptqconv's layer-output check may widen the tool's thresholds "
               "(calibration.refine: cosine), --seed-exact keeps the tool's own thresholds "
               "(refine: none); --bias-correction adds ptqconv's empirical bias correction "
               "(quantize.bias_correction: true); -q hides the step log.")
KIND_NAMES = {"calibrators": "calibration method", "weight_quantizers": "weight quantizer"}


@dataclass(frozen=True)
class Unsupported:
    """A seed-tool method value ptqconv deliberately does not provide, and why."""

    label: str
    reason: str


def parse_number(text: str, what: str) -> float:
    """Parse one number of a seed-tool option, naming ``what`` on error."""
    try:
        return float(str(text).strip())
    except ValueError:
        raise PtqconvError(f"{what}: '{text}' is not a number") from None


def parse_int(text: str, what: str) -> int:
    """Parse an integer option value (``"1"``), naming ``what`` on error."""
    value = parse_number(text, what)
    if value != int(value):
        raise PtqconvError(f"{what}: '{text}' is not an integer")
    return int(value)


def number_list(text: str, what: str) -> List[float]:
    """Parse ``"104,117,123"`` or ``"[104,117,123]"`` into floats."""
    body = str(text).strip().strip("[]")
    items = [t for t in body.replace(" ", ",").split(",") if t.strip()]
    if not items:
        raise PtqconvError(f"{what}: expected comma-separated numbers, got '{text}'")
    return [parse_number(t, what) for t in items]


def bracket_lists(text: str, what: str) -> List[List[float]]:
    """Parse ncnn's ``"[104,117,123],[128]"`` into one list per model input."""
    groups, depth, current = [], 0, ""
    for ch in str(text):
        if ch == "[":
            depth += 1
            current = ""
        elif ch == "]":
            depth -= 1
            groups.append(current)
        elif depth > 0:
            current += ch
        elif ch not in ", ":
            raise PtqconvError(f"{what}: expected [a,b,...] lists separated by commas, got "
                               f"'{text}'")
        if depth not in (0, 1):
            raise PtqconvError(f"{what}: unbalanced brackets in '{text}'")
    if depth != 0 or not groups:
        raise PtqconvError(f"{what}: expected [a,b,...] lists separated by commas, got '{text}'")
    return [number_list(g, what) for g in groups]


def flag_value(text: str, what: str, allowed: Sequence[int] = (0, 1)) -> int:
    """Parse an integer switch such as ``-b 1`` and check it is one of ``allowed``."""
    value = parse_int(text, what)
    if value not in allowed:
        raise PtqconvError(f"{what}: {value} is not one of {', '.join(map(str, allowed))}")
    return value


def resolve(tool: str, option: str, value, mapping: Dict[str, Union[str, Unsupported]],
            kind: str = "calibrators") -> str:
    """Map a seed tool's method ``value`` of ``option`` to the ptqconv plugin name.

    Raises a one-line error when the value is not one the tool knows, when ptqconv deliberately
    does not provide it (:class:`Unsupported`), or when the ptqconv plugin it needs is not
    installed: never a silent fallback to another method.
    """
    key = str(value).strip()
    if key not in mapping:
        hint = did_you_mean(key, mapping)
        raise PtqconvError(f"{tool}: {option} '{key}' is not a valid value{hint} "
                           f"(valid: {', '.join(mapping)})")
    target = mapping[key]
    if isinstance(target, Unsupported):
        raise PtqconvError(f"{tool}: {option} {key} ({target.label}) is not supported by "
                           f"ptqconv: {target.reason}")
    from ptqconv.core.plugins import get_registry
    available = getattr(get_registry(), kind)
    if target not in available:
        raise PtqconvError(f"{tool}: {option} {key} needs the ptqconv {KIND_NAMES[kind]} "
                           f"'{target}', which is not installed (installed: "
                           f"{', '.join(sorted(available)) or 'none'})")
    return target


def take_flags(argv: Sequence[str], *flags: str):
    """Split ptqconv's own switches (``--print-config``, ``-q``) off a seed-tool argv.
    Returns (remaining argv, set of the flags found)."""
    found, rest = set(), []
    for a in argv:
        if a in flags:
            found.add(a)
        elif a == "--debug":  # handled by the ptqconv entry point
            continue
        else:
            rest.append(a)
    return rest, found


def apply_policy(config: dict, flags) -> dict:
    """What a dialect job that calibrates adds to the tool's own steps: ptqconv's layer-output
    cosine check of the tool's thresholds (``calibration.refine: cosine``; on SqueezeNet it
    lowered the output KL divergence from fp32 of every KL-based dialect by 10-25%), unless
    ``--seed-exact`` asks for the tool's thresholds unchanged (``refine: none``). No bias
    correction unless the tool's config asks for it (MindSpore's ``bias_correction``) or
    ``--bias-correction`` is given."""
    if "calibration" in config:
        config["calibration"]["refine"] = "none" if SEED_EXACT in flags else "cosine"
        quantize = config.setdefault("quantize", {})
        if BIAS_CORRECTION in flags:
            quantize["bias_correction"] = True
        quantize.setdefault("bias_correction", False)
    return config


def absolute(path: Optional[str]) -> Optional[str]:
    """The absolute form of a path (printed configs must not depend on the working folder)."""
    return None if path is None else os.path.abspath(path)


def config_yaml(config: dict, command: Sequence[str]) -> str:
    """The ptqconv YAML equivalent to a seed-tool command: validated, then dumped with a header
    naming the command and how to run the file."""
    load_config(dict(config))  # the same validation `ptqconv -c` applies
    shown = " ".join(shlex.quote(str(a)) for a in command)
    header = (f"# ptqconv config equivalent to:\n#   ptqconv {shown}\n"
              "# run it with:  ptqconv -c THIS_FILE.yaml\n")
    return header + yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=100)


def run_or_print(config: dict, command: Sequence[str], flags) -> Optional[object]:
    """Print the YAML (``--print-config``) and return None, or run the conversion job and return
    its :class:`ConvertResult`."""
    if PRINT_CONFIG in flags:
        print(config_yaml(config, command), end="")
        return None
    log.QUIET = bool(set(QUIET) & set(flags))
    from ptqconv.core.convert import convert
    return convert(dict(config))


def prune(mapping: dict) -> dict:
    """Drop keys whose value is None (recursively), so the printed YAML holds what was set."""
    out = {}
    for k, v in mapping.items():
        if isinstance(v, dict):
            v = prune(v)
            if not v:
                continue
        if v is not None:
            out[k] = v
    return out


def one_or_list(items: list):
    """A single item for single-input models, the list for several (the config accepts both)."""
    return items[0] if len(items) == 1 else items


def usage_error(tool: str, usage: str, message: str) -> PtqconvError:
    """A one-line usage error of a seed-tool command."""
    return PtqconvError(f"{tool}: {message} (usage: {usage})")


class DialectParser(argparse.ArgumentParser):
    """argparse for seed-tool flags whose errors are one-line ptqconv errors."""

    def error(self, message):
        raise PtqconvError(f"{self.prog}: {message}")
