"""Top-1 of fp32 vs int8 ncnn models on the shared ImageNet sample (first 100 sorted images
calibrate, the other 400 evaluate), both run by the ``ncnn`` pip package.

    python benchmarks/ncnn_accuracy.py                 # both models, 400 evaluation images
    python benchmarks/ncnn_accuracy.py --model squeezenet --limit 100 --threads 2

SqueezeNet 1.1: ``ptqconv --from ncnn --to ncnn-int8 --config configs/squeezenet_ncnn_int8.yaml``
(caffe-bgr227), fp32 reference = the shared ncnn model. MobileNetV2: ``ptqconv --to ncnn-int8
--config configs/mobilenet_v2_ncnn_int8.yaml`` (torchvision preprocessing), fp32 reference =
onnxruntime on the ONNX model (the fp32 ncnn conversion is shown too). Prints a results table
with top-1, the drop, top-1 agreement with the fp32 reference and the mean KL divergence of the
softmax outputs from it (more sensitive than top-1 on 400 images, where one image is 0.25 points).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("PTQCONV_SHARED", ROOT.parent / "shared")) / "data"
IMAGES = SHARED / "images" / "imagenet-sample"
CALIB = 100


def split():
    """(calibration paths, evaluation paths with labels): sorted file names of labels.txt."""
    labels = {}
    for line in (IMAGES / "labels.txt").read_text().splitlines():
        if line.strip():
            name, idx = line.split("\t")[:2]
            labels[name] = int(idx)
    names = sorted(labels)
    return names[:CALIB], [(str(IMAGES / n), labels[n]) for n in names[CALIB:]]


def convert(config: str, output: Path, extra=()):
    """Run the documented ptqconv command; returns seconds taken."""
    cmd = [sys.executable, "-m", "ptqconv.core.cli", "-q", "--config", str(ROOT / config),
           "-o", str(output)] + list(extra)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def predict(run, items, preprocess, size, input_name):
    """Softmax probabilities (N, classes) of ``run`` on ``items``."""
    from ptqconv.core.data import load_image
    rows = []
    for path, _ in items:
        y = np.asarray(run({input_name: load_image(path, preprocess, size)[None]})[0],
                       np.float64).reshape(-1)
        if y.min() < 0 or abs(y.sum() - 1.0) > 1e-3:   # logits
            y = np.exp(y - y.max())
            y /= y.sum()
        rows.append(y)
    return np.stack(rows)


def scores(ref, probs, items):
    """(top-1, top-1 agreement with ``ref``, mean KL(ref || probs)) of ``probs``."""
    labels = np.array([label for _, label in items])
    kl = np.mean(np.sum(ref * np.log((ref + 1e-12) / (probs + 1e-12)), axis=1))
    return (float(np.mean(probs.argmax(1) == labels)),
            float(np.mean(probs.argmax(1) == ref.argmax(1))), float(kl))


def onnx_runner(path, threads):
    """A callable running an ONNX file on onnxruntime (same interface as the ncnn runtime)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda feed: sess.run(None, feed)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=["squeezenet", "mobilenet", "all"], default="all")
    p.add_argument("--limit", type=int, help="evaluate only the first N of the 400 images")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workdir", default=str(ROOT / "out" / "bench"))
    p.add_argument("--option", action="append", default=[], help="writer option KEY=VALUE")
    p.add_argument("--squeezenet-config", default="configs/squeezenet_ncnn_int8.yaml")
    p.add_argument("--mobilenet-config", default="configs/mobilenet_v2_ncnn_int8.yaml")
    args = p.parse_args(argv)
    from ptqconv.core.config import Preprocess
    from ptqconv.formats.ncnn.runtime import ncnn_runtime
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    _, items = split()
    items = items[: args.limit] if args.limit else items
    rt_opts = {"threads": args.threads}
    extra = [a for o in args.option for a in ("--option", o)]
    rows = []
    if args.model in ("squeezenet", "all"):
        pre = Preprocess(pixel="BGR", size=[227, 227], mean=[104.0, 117.0, 123.0])
        src = SHARED / "models" / "squeezenet_v1.1" / "squeezenet_v1.1"
        out = work / "squeezenet_v1.1_int8.param"
        secs = convert(args.squeezenet_config, out, extra)
        ref = predict(ncnn_runtime([f"{src}.param", f"{src}.bin"], rt_opts), items, pre,
                      (227, 227), "data")
        q8 = predict(ncnn_runtime([str(out), str(out.with_suffix(".bin"))], rt_opts), items,
                     pre, (227, 227), "data")
        rows.append(("SqueezeNet 1.1", "ncnn fp32", scores(ref, ref, items),
                     scores(ref, q8, items), secs))
    if args.model in ("mobilenet", "all"):
        pre = Preprocess(pixel="RGB", resize_short=256, size=[224, 224],
                         mean=[123.675, 116.28, 103.53], norm=[0.017125, 0.017507, 0.017429])
        onnx_path = SHARED / "models" / "mobilenet_v2" / "mobilenet_v2.onnx"
        out = work / "mobilenet_v2_int8.param"
        secs = convert(args.mobilenet_config, out, extra)
        f32 = work / "mobilenet_v2_fp32.param"
        subprocess.run([sys.executable, "-m", "ptqconv.core.cli", "-q", "--to", "ncnn", "-i",
                        str(onnx_path), "-o", str(f32)], check=True)
        ref = predict(onnx_runner(onnx_path, args.threads), items, pre, (224, 224), "input")
        f32n = predict(ncnn_runtime([str(f32), str(f32.with_suffix(".bin"))], rt_opts), items,
                       pre, (224, 224), "input")
        q8 = predict(ncnn_runtime([str(out), str(out.with_suffix(".bin"))], rt_opts), items,
                     pre, (224, 224), "input")
        rows.append(("MobileNetV2", "onnxruntime fp32", scores(ref, ref, items),
                     scores(ref, q8, items), secs))
        rows.append(("MobileNetV2 (ncnn fp32)", "onnxruntime fp32", scores(ref, ref, items),
                     scores(ref, f32n, items), None))
    print(f"\n{len(items)} evaluation images (calibration: first {CALIB} sorted images)\n")
    print("| model | reference | reference top-1 | converted top-1 | drop (points) | "
          "agreement with reference | mean KL to reference | convert s |")
    print("|---|---|---|---|---|---|---|---|")
    for model, ref_name, (a, _, _), (b, agree, kl), secs in rows:
        print(f"| {model} | {ref_name} | {a:.4f} | {b:.4f} | {100 * (a - b):+.2f} | "
              f"{agree:.4f} | {kl:.5f} | {'' if secs is None else f'{secs:.1f}'} |")

if __name__ == "__main__":
    main()
