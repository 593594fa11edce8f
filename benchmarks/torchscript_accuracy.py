"""Top-1 cost of quantizing a TorchScript model: SqueezeNet v1.1 (torch.jit.trace file) -> int8.

Run from the project root (needs ../shared/data, the ncnn pip package and the pnnx executable:
``pip install --no-deps pnnx``):

    python benchmarks/torchscript_accuracy.py [--method kl] [--to ncnn-int8 onnx-int8] [--out DIR]

It calibrates on the first 100 sorted shared images (configs/squeezenet_torchscript_int8.yaml),
then evaluates on the other 400:
  * fp32: the TorchScript file as ncnn fp32 files (ptqconv's ``ncnn`` writer when it exists,
    otherwise the param/bin pnnx itself writes), run by the ncnn package;
  * each int8 target, run by its format's runtime (ncnn for ncnn-int8, onnxruntime for ONNX).
Each int8 target is measured with the config's bias correction and without it (plain KL). The
table shows top-1/top-5 and the top-1 loss in points; the budget (1.0 point) applies to the
config's setting.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
MODEL = os.path.join(SHARED, "models", "squeezenet_v1.1", "squeezenet_v1.1.torchscript.pt")
IMAGES = os.path.join(SHARED, "images", "imagenet-sample")
CONFIG = os.path.join(ROOT, "configs", "squeezenet_torchscript_int8.yaml")
CALIB = 100
BUDGET = 1.0


def fp32_ncnn(out_dir: str, registry):
    """Write the TorchScript model as fp32 ncnn files; returns ([param, bin], how)."""
    import ptqconv
    param = os.path.join(out_dir, "squeezenet_fp32.param")
    if "ncnn" in registry.writer_names():
        written = ptqconv.convert(CONFIG, to="ncnn", output=param).outputs
        return written, "ptqconv ncnn writer"
    from ptqconv.formats.torchscript.reader import pnnx_to_ncnn
    work = tempfile.mkdtemp(dir=out_dir)  # kept: the fp32 files are evaluated from here
    param, binfile, _ = pnnx_to_ncnn(MODEL, work, None)
    return [param, binfile], "pnnx's own ncnn output"


def main(argv=None) -> int:
    """Convert, evaluate and print the results table; exit 1 when a target exceeds the budget."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="kl", help="activation calibration method")
    p.add_argument("--to", nargs="+", default=["ncnn-int8"], help="int8 writers to measure")
    p.add_argument("--out", help="folder for the converted models (default: a temporary one)")
    args = p.parse_args(argv)
    for path in (MODEL, IMAGES):
        if not os.path.exists(path):
            sys.exit(f"missing shared data: {path}")

    import ptqconv
    from ptqconv.core import log
    from ptqconv.core.evaluate import evaluate
    from ptqconv.core.plugins import get_registry
    log.QUIET = True
    registry = get_registry()
    out_dir = args.out or tempfile.mkdtemp(prefix="ptqconv-ts-bench-")
    os.makedirs(out_dir, exist_ok=True)

    rows = []
    t = time.perf_counter()
    fp32_paths, how = fp32_ncnn(out_dir, registry)
    base = evaluate(fp32_paths, IMAGES, config=CONFIG, from_format="ncnn", skip=CALIB)
    rows.append(("fp32 (" + how + ")", base, time.perf_counter() - t))
    failed = False
    for target in args.to:
        if target not in registry.writer_names():
            print(f"{target}: writer not available (ptqconv plugins lists the writers)")
            failed = True
            continue
        ext = ".param" if target.startswith("ncnn") else ".onnx"
        for corrected in (True, False):  # the config's setting first; the budget applies to it
            tag = "bias-corrected" if corrected else "plain"
            output = os.path.join(out_dir, f"squeezenet_{target}_{tag}{ext}")
            t = time.perf_counter()
            written = ptqconv.convert(CONFIG, to=target, output=output,
                                      **{"calibration.method": args.method,
                                         "calibration.count": CALIB,
                                         "quantize.bias_correction": corrected}).outputs
            result = evaluate(written, IMAGES, config=CONFIG, skip=CALIB)
            rows.append((f"{target} ({args.method}, {CALIB} calib, {tag})", result,
                         time.perf_counter() - t))
            if corrected:
                failed |= 100 * (base.top1 - result.top1) / base.n > BUDGET

    print(f"\nSqueezeNet v1.1 TorchScript, {base.n} evaluation images (shared sample after the "
          f"first {CALIB}); models in {out_dir}\n")
    print(f"| model | runtime | top-1 | top-5 | top-1 loss (points) | seconds |")
    print(f"| --- | --- | --- | --- | --- | --- |")
    for name, r, secs in rows:
        loss = 100 * (base.top1 - r.top1) / r.n
        print(f"| {name} | {r.runtime} | {100 * r.top1 / r.n:.2f}% ({r.top1}/{r.n}) | "
              f"{100 * r.top5 / r.n:.2f}% ({r.top5}/{r.n}) | {loss:+.2f} | {secs:.0f} |")
    print(f"\nbudget: at most {BUDGET:.1f} point of top-1 lost -> "
          f"{'FAIL' if failed else 'pass'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
