"""Command line: ``ptqconv [--from F] --to W -i MODEL -o OUT [--config cfg.yaml] ...``.

Sub-commands (``ptqconv plugins``, and those plugins register, such as seed-tool dialects) are
dispatched by their first word; everything else is a conversion job handled by
:func:`ptqconv.core.convert.convert`.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

from ptqconv.core import log
from ptqconv.core.errors import PtqconvError

EXIT_USER_ERROR = 2


def convert_parser() -> argparse.ArgumentParser:
    """The argument parser of the conversion job."""
    p = argparse.ArgumentParser(
        prog="ptqconv",
        description="Convert and post-training-quantize models between ONNX, ncnn, MNN, Tengine "
                    "and TNN. Sub-commands: 'ptqconv plugins', and 'ptqconv COMMAND --help' for "
                    "each command listed there.")
    p.add_argument("--from", dest="from_format", help="reader name (sniffed from the file if omitted)")
    p.add_argument("--to", help="writer name, e.g. onnx, onnx-int8, ncnn-int8")
    p.add_argument("-c", "--config", help="YAML config; flags override its keys")
    p.add_argument("-i", "--input", nargs="+", help="model file(s); a second file is found beside "
                   "the first for two-file formats")
    p.add_argument("-o", "--output", help="output model (for two-file formats, the first file)")
    p.add_argument("--calib", help="calibration data: folder, list file, glob or .npy files")
    p.add_argument("--count", type=int, help="use the first N calibration inputs (sorted)")
    p.add_argument("--method", help="activation calibration method (e.g. kl, minmax)")
    p.add_argument("--backend", help="hardware backend profile")
    p.add_argument("--threads", type=int, help="onnxruntime threads for calibration")
    p.add_argument("--batch-size", type=int, help="calibration batch size")
    p.add_argument("--save-table", help="write the quantization table (format by file ending)")
    p.add_argument("--load-table", help="use this quantization table instead of calibrating")
    p.add_argument("--report", help="write a per-layer diagnosis report (.md or .html)")
    p.add_argument("--skip", nargs="+", help="layer names kept in float")
    p.add_argument("--weights", choices=["per-channel", "per-tensor", "mix"],
                   help="weight granularity")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="format option passed to the reader/writer (repeatable), e.g. fp16=1")
    p.add_argument("--input-shape", action="append", metavar="N,C,H,W",
                   help="model input shape for formats that do not store one (TorchScript); "
                        "repeat for several inputs; same as --option input_shape=N,C,H,W")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", dest="set_keys",
                   help="any config key by its dotted path (repeatable), e.g. "
                   "quantize.bias_correction=true, calibration.params.percentile=99.9")
    p.add_argument("-q", "--quiet", action="store_true", help="no step log")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def run_convert(argv) -> int:
    """Parse conversion flags and run the job; returns the exit code."""
    args = convert_parser().parse_args(argv)
    log.QUIET = args.quiet
    from ptqconv.core.convert import convert
    overrides = {"input": args.input, "output": args.output, "from": args.from_format,
                 "to": args.to, "backend": args.backend, "save_table": args.save_table,
                 "load_table": args.load_table, "report": args.report,
                 "calibration.data": args.calib,
                 "calibration.count": args.count, "calibration.method": args.method,
                 "calibration.threads": args.threads, "calibration.batch_size": args.batch_size,
                 "quantize.skip": args.skip, "quantize.weights": args.weights}
    for item in args.option or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise PtqconvError(f"--option expects KEY=VALUE, got '{item}'")
        overrides[f"options.{key}"] = _parse_scalar(value)
    for item in args.set_keys or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise PtqconvError(f"--set expects KEY=VALUE, got '{item}'")
        overrides[key] = _parse_scalar(value)
    if args.input_shape:
        overrides["options.input_shape"] = ";".join(args.input_shape)
    convert(args.config, **overrides)
    return 0


def _parse_scalar(text):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def run_plugins(argv) -> int:
    """``ptqconv plugins``: every plugin, its distribution and version, and what it provides."""
    argparse.ArgumentParser(prog="ptqconv plugins",
                            description="List loaded plugins and what they provide.").parse_args(argv)
    from ptqconv.core.plugins import get_registry
    registry = get_registry()
    for info in sorted(registry.plugins.values(), key=lambda i: i.name):
        dist = f"{info.distribution} {info.version}".strip() or "-"
        print(f"{info.name}  ({info.module}; {dist})")
        for kind, name in info.provides:
            extra = ""
            if kind == "format":
                fmt = registry.formats[name]
                caps = [c for c, ok in (("read", fmt.read), ("write", fmt.write)) if ok]
                caps += [f"write-{q}" for q in fmt.quantized]
                extra = f" [{', '.join(caps)}]"
                if fmt.description:
                    extra += f" {fmt.description}"
            print(f"    {kind}: {name}{extra}")
    return 0


def run_eval(argv) -> int:
    """``ptqconv eval``: see :func:`ptqconv.core.evaluate.run_eval`."""
    from ptqconv.core.evaluate import run_eval as _run_eval
    return _run_eval(argv)


def run_diagnose(argv) -> int:
    """``ptqconv diagnose``: see :func:`ptqconv.core.diagnose.command.run_diagnose`."""
    from ptqconv.core.diagnose.command import run_diagnose as _run_diagnose
    return _run_diagnose(argv)


BUILTIN_COMMANDS = {"plugins": run_plugins, "eval": run_eval, "diagnose": run_diagnose}


def main(argv=None) -> int:
    """Entry point of the ``ptqconv`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("PTQCONV_DEBUG") == "1"
    warnings.simplefilter("default")
    warnings.formatwarning = lambda msg, *a, **k: f"warning: {msg}\n"
    try:
        if argv and argv[0] in BUILTIN_COMMANDS:
            return BUILTIN_COMMANDS[argv[0]](argv[1:])
        if argv and not argv[0].startswith("-"):
            from ptqconv.core.plugins import get_registry
            registry = get_registry()
            if argv[0] in registry.commands:
                return int(registry.commands[argv[0]].run(argv[1:]) or 0)
            if not os.path.exists(argv[0]):
                from ptqconv.core.errors import unknown_name
                raise unknown_name("command", argv[0],
                                   list(BUILTIN_COMMANDS) + list(registry.commands))
        return run_convert(argv)
    except PtqconvError as exc:
        if debug:
            raise
        print(f"ptqconv: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("ptqconv: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("ptqconv: error: out of memory", file=sys.stderr)
        return 1
    except Exception as exc:  # last resort: one line, the traceback only with --debug
        if debug:
            raise
        print(f"ptqconv: internal error: {type(exc).__name__}: {exc} (run with --debug for the "
              f"traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
