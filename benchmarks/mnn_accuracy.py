"""Accuracy of ptqconv's MNN output, run by MNN itself (the ``MNN`` pip package).

Run from the project root (needs ../shared/data and MNN; about 6-10 minutes on 2 cores):

    python benchmarks/mnn_accuracy.py [--method kl] [--eval 400] [--threads 1] [--keep DIR]

Steps, each a real ``ptqconv`` command in a subprocess:
  1. MobileNetV2 ONNX -> ``mnn`` (fp32);
  2. MobileNetV2 ONNX -> ``mnn-int8``, calibrated with ``--method`` on the first 100 sorted shared
     images (configs/mobilenet_v2_onnx_int8.yaml: torchvision preprocessing).
Then the other 400 images run through onnxruntime (the fp32 ONNX) and MNN (both .mnn files); the
table gives top-1/top-5, the mean cosine of the logits to onnxruntime's, the top-1 agreement with
onnxruntime, the images each model gets right/wrong where onnxruntime does not (+/-) and the time
per image. With ~20 images flipping either way, top-1 differences of about one point are within
the noise of 400 images; the agreement and cosine columns measure the int8 fidelity itself.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
MODEL = os.path.join(SHARED, "models", "mobilenet_v2", "mobilenet_v2.onnx")
IMAGES = os.path.join(SHARED, "images", "imagenet-sample")
CONFIG = os.path.join(ROOT, "configs", "mobilenet_v2_onnx_int8.yaml")
CALIB_COUNT = 100


def split():
    """(calibration list, evaluation (file, label) list) of the shared images, sorted by name."""
    with open(os.path.join(IMAGES, "labels.txt"), encoding="utf-8") as f:
        rows = sorted((r[0], int(r[1])) for r in (ln.split("\t") for ln in f.read().splitlines()
                                                   if ln.strip()))
    files = [(os.path.join(IMAGES, name), label) for name, label in rows]
    return [p for p, _ in files[:CALIB_COUNT]], files[CALIB_COUNT:]


def ptqconv(*args) -> float:
    """Run one ``ptqconv`` command; returns its wall time."""
    t0 = time.perf_counter()
    cmd = ["ptqconv", *args]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def evaluate(models, samples, threads):
    """Per model: top-1, top-5, mean cosine to onnxruntime, top-1 agreement, ms per image."""
    import onnxruntime as ort
    from ptqconv.core.config import load_config
    from ptqconv.core.data import load_image
    from ptqconv.formats.mnn.runtime import MnnRunner

    pre = load_config(CONFIG).preprocess_for(0)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.log_severity_level = threads, 3
    sess = ort.InferenceSession(MODEL, opts, providers=["CPUExecutionProvider"])
    runners = {"onnxruntime fp32 (ONNX)": None}
    for label, path in models.items():
        runners[label] = MnnRunner(path, ["input"], ["logits"], threads=threads)
    stats = {k: {"top1": 0, "top5": 0, "cos": 0.0, "agree": 0, "time": 0.0, "won": 0, "lost": 0}
             for k in runners}
    for path, label in samples:
        x = load_image(path, pre, pre.size)[None]
        ref = None
        ref_hit = None
        for name, runner in runners.items():
            t0 = time.perf_counter()
            y = (sess.run(None, {"input": x})[0] if runner is None
                 else runner({"input": x})[0]).reshape(-1)
            s = stats[name]
            s["time"] += time.perf_counter() - t0
            ref = y if ref is None else ref
            top5 = np.argsort(-y)[:5]
            hit = int(top5[0] == label)
            ref_hit = hit if ref_hit is None else ref_hit
            s["won"] += int(hit and not ref_hit)
            s["lost"] += int(ref_hit and not hit)
            s["top1"] += hit
            s["top5"] += int(label in top5)
            s["cos"] += float(y @ ref / (np.linalg.norm(y) * np.linalg.norm(ref) + 1e-30))
            s["agree"] += int(np.argmax(y) == np.argmax(ref))
    return stats


def main(argv=None) -> int:
    """Build the two .mnn files, evaluate, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="kl", help="calibration method (default kl)")
    ap.add_argument("--eval", type=int, default=400, help="evaluation images (default 400)")
    ap.add_argument("--threads", type=int, default=1, help="threads for each runtime")
    ap.add_argument("--keep", help="folder for the .mnn files (default: a temporary folder)")
    ap.add_argument("--skip", nargs="+", default=[], help="layers kept in float in the int8 model")
    args = ap.parse_args(argv)
    calib, samples = split()
    samples = samples[:args.eval]
    work = args.keep or tempfile.mkdtemp(prefix="mnn_accuracy_")
    os.makedirs(work, exist_ok=True)
    calib_list = os.path.join(work, "calib.txt")
    with open(calib_list, "w", encoding="utf-8") as f:
        f.write("\n".join(calib) + "\n")
    fp32 = os.path.join(work, "mobilenet_v2.mnn")
    int8 = os.path.join(work, f"mobilenet_v2_int8_{args.method}.mnn")
    t_fp32 = ptqconv("-q", "--to", "mnn", "-i", MODEL, "-o", fp32)
    t_int8 = ptqconv("-q", "-c", CONFIG, "--to", "mnn-int8", "-i", MODEL, "-o", int8,
                     "--calib", calib_list, "--count", str(CALIB_COUNT), "--method", args.method,
                     "--threads", str(max(args.threads, 1)),
                     *(["--skip", *args.skip] if args.skip else []))
    stats = evaluate({"MNN fp32 (ptqconv mnn)": fp32,
                      f"MNN int8 (ptqconv mnn-int8, {args.method})": int8}, samples, args.threads)
    n = len(samples)
    print(f"\nMobileNetV2, {n} evaluation images (calibration: first {CALIB_COUNT} sorted images)")
    print(f"conversion time: mnn {t_fp32:.1f}s, mnn-int8 {t_int8:.1f}s\n")
    print(f"| {'model / runtime':44s} | top-1 | top-5 | cos to ORT | top-1 agree | +/- vs ORT "
          f"| ms/img |")
    print(f"|{'-' * 46}|-------|-------|------------|-------------|------------|--------|")
    for name, s in stats.items():
        top1 = 100.0 * s["top1"] / n
        print(f"| {name:44s} | {top1:5.2f} | {100.0 * s['top5'] / n:5.2f} | "
              f"{s['cos'] / n:10.6f} | {100.0 * s['agree'] / n:10.2f}% | "
              f"{'+%d/-%d' % (s['won'], s['lost']):>10s} | {1000 * s['time'] / n:6.1f} |")
    from ptqconv.formats.mnn.runtime import int8_conv_count, mnn_op_counts
    for label, path in (("fp32", fp32), ("int8", int8)):
        counts = mnn_op_counts(path)
        convs = sum(v for k, v in counts.items() if k.startswith("Convolution"))
        print(f"MNN session of the {label} file: {int8_conv_count(counts)} of {convs} "
              f"convolutions run in int8")
    print(f"\nfiles in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
