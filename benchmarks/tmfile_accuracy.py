"""Accuracy of ptqconv's Tengine int8 output, checked without a Tengine runtime.

Run from the project root (needs ../shared/data; 3-6 minutes on 2 cores):

    python benchmarks/tmfile_accuracy.py [--method kl] [--threads 2] [--also-default] \
        [--compare-onnx]

Steps, each a real ``ptqconv`` command in a subprocess:
  1. MobileNetV2 ONNX -> ``tmfile-int8``, calibrated on the first 100 sorted shared images with
     configs/mobilenet_v2_onnx_int8.yaml (torchvision preprocessing) plus the settings that suit
     Tengine's signed int8 activations: ``quantize.unsigned_activations: false`` (thresholds chosen
     for the int8 codes the file stores) and ``quantize.bias_correction: true``; Tengine's
     ``table_<method>.scale`` is saved too;
  2. that tmfile read back -> ``onnx-int8`` (QDQ) with the quantization table stored in the tmfile
     (``ptqconv --from tmfile --to onnx-int8 -i x.tmfile -o y.onnx``);
  3. ``--also-default``: steps 1-2 with the config's defaults unchanged;
     ``--compare-onnx``: ptqconv's own ``onnx-int8`` with the settings of step 1.
Top-1 of the fp32 ONNX model and of each int8 model on the other 400 images is printed as a table.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
MODEL = os.path.join(SHARED, "models", "mobilenet_v2", "mobilenet_v2.onnx")
IMAGES = os.path.join(SHARED, "images", "imagenet-sample")
CONFIG = os.path.join(ROOT, "configs", "mobilenet_v2_onnx_int8.yaml")
CALIB_COUNT = 100
TENGINE_SETTINGS = {"unsigned_activations": False, "bias_correction": True}


def job_config(work: str, name: str, quantize: dict) -> str:
    """Write the example config with absolute paths and extra ``quantize`` keys; return its path."""
    with open(CONFIG, encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    base = os.path.dirname(CONFIG)
    cfg["input"] = os.path.normpath(os.path.join(base, cfg["input"]))
    cfg["calibration"]["data"] = os.path.normpath(os.path.join(base, cfg["calibration"]["data"]))
    cfg.pop("output", None)
    cfg["quantize"] = {**cfg.get("quantize", {}), **quantize}
    path = os.path.join(work, name)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg, f)
    return path


def evaluation_split():
    """(file, label) of the 400 evaluation images: all sorted names after the first 100."""
    with open(os.path.join(IMAGES, "labels.txt"), encoding="utf-8") as f:
        rows = [ln.split("\t") for ln in f.read().splitlines() if ln.strip()]
    rows = sorted((r[0], int(r[1])) for r in rows)
    return [(os.path.join(IMAGES, name), label) for name, label in rows[CALIB_COUNT:]]


def top1(model_path: str, samples, threads: int) -> float:
    """Top-1 accuracy of an ONNX model on ``samples`` with the config's preprocessing."""
    import onnxruntime as ort
    from ptqconv.core.config import load_config
    from ptqconv.core.data import load_image

    pre = load_config(CONFIG).preprocess_for(0)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    hits = 0
    for path, label in samples:
        x = load_image(path, pre, pre.size)[None]
        hits += int(np.argmax(sess.run(None, {name: x})[0]) == label)
    return hits / len(samples)


def ptqconv(*args: str) -> float:
    """Run the ``ptqconv`` CLI; return its wall time (raises on failure)."""
    t = time.perf_counter()
    cmd = [sys.executable, "-m", "ptqconv.core.cli", "-q", *args]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{result.stderr}")
    return time.perf_counter() - t


def tmfile_round(work: str, tag: str, config: str, common) -> tuple:
    """Quantize to tmfile-int8 (saving Tengine's table), read back to QDQ ONNX; return the ONNX
    path and the seconds both commands took."""
    tm = os.path.join(work, f"mobilenet_v2_{tag}.tmfile")
    back = os.path.join(work, f"mobilenet_v2_{tag}_from_tmfile.onnx")
    table = os.path.join(work, f"table_{tag}.scale")
    t1 = ptqconv("-c", config, *common, "--to", "tmfile-int8", "-o", tm, "--save-table", table)
    t2 = ptqconv("--from", "tmfile", "--to", "onnx-int8", "-i", tm, "-o", back)
    return back, t1 + t2


def main(argv=None) -> int:
    """Run the comparison and print the results table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="kl", help="calibration method (default kl)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--also-default", action="store_true",
                   help="also run tmfile-int8 with the example config's defaults")
    p.add_argument("--compare-onnx", action="store_true",
                   help="also quantize straight to onnx-int8 with the same settings")
    p.add_argument("--keep", help="folder to keep the produced files in")
    args = p.parse_args(argv)
    for path in (MODEL, IMAGES, CONFIG):
        if not os.path.exists(path):
            raise SystemExit(f"missing {path}")
    samples = evaluation_split()
    work = args.keep or tempfile.mkdtemp(prefix="ptqconv_tmfile_")
    os.makedirs(work, exist_ok=True)
    common = ["--method", args.method, "--count", str(CALIB_COUNT), "--threads", str(args.threads)]
    tengine_cfg = job_config(work, "tengine_int8.yaml", TENGINE_SETTINGS)
    rows = [("fp32 ONNX", top1(MODEL, samples, args.threads), None)]
    back, secs = tmfile_round(work, args.method, tengine_cfg, common)
    rows.append(("tmfile-int8 -> read back -> QDQ ONNX", top1(back, samples, args.threads), secs))
    if args.also_default:
        back, secs = tmfile_round(work, args.method + "_defaults", job_config(work, "defaults.yaml",
                                                                                {}), common)
        rows.append(("  same, config defaults", top1(back, samples, args.threads), secs))
    if args.compare_onnx:
        direct = os.path.join(work, "mobilenet_v2_direct_int8.onnx")
        secs = ptqconv("-c", tengine_cfg, *common, "--to", "onnx-int8", "-o", direct)
        rows.append(("ptqconv onnx-int8, same settings", top1(direct, samples, args.threads), secs))
    base = rows[0][1]
    print(f"\nMobileNetV2, {args.method} on the first {CALIB_COUNT} sorted images, top-1 on the "
          f"other {len(samples)} (tmfile settings: {TENGINE_SETTINGS})")
    print(f"{'model':42s} {'top-1':>7s} {'lost':>7s} {'convert s':>10s}")
    for name, acc, secs in rows:
        lost = "" if secs is None else f"{100 * (base - acc):.2f}"
        took = "" if secs is None else f"{secs:.1f}"
        print(f"{name:42s} {100 * acc:6.2f}% {lost:>7s} {took:>10s}")
    print(f"files in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
