"""Accuracy, calibration time and peak memory of every calibration and weight method.

Models: MobileNetV2 (ONNX, torchvision preprocessing) and SqueezeNet v1.1 (ONNX, caffe-bgr227
preprocessing) from ../shared/data. The first 100 sorted shared images calibrate, the other 400
evaluate. Each configuration is converted with the ``onnx-int8`` writer (QDQ) in a fresh
subprocess (so its peak RSS is its own) and evaluated with onnxruntime.

Command (from the project root; about an hour on 2 cores):

    python benchmarks/algorithms_accuracy.py --threads 2 --out benchmarks/results/algorithms.md

``--only kl,mse`` keeps the rows whose label contains one of the words, ``--models mobilenet_v2``
one model, ``--eval-count 100`` a quicker (less precise) evaluation.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import CAFFE_BGR227, SHARED, TORCHVISION, imagenet_labels, imagenet_split  # noqa: E402

MODELS = {
    "mobilenet_v2": (SHARED / "models" / "mobilenet_v2" / "mobilenet_v2.onnx", TORCHVISION),
    "squeezenet_v1.1": (SHARED / "models" / "squeezenet_v1.1" / "squeezenet_v1.1.onnx",
                        CAFFE_BGR227),
}
METHODS = ("minmax", "kl", "kl-mnn", "kl-tengine", "kl-mindspore", "aciq", "admm", "ema",
           "percentile", "mse", "eq")
EQ_PARAMS = {"eq_inputs": 16}  # ncnn uses 50; 16 keeps the benchmark's EQ run to minutes


def configurations():
    """(label, dotted config overrides) of every benchmarked configuration."""
    rows = []
    for m in METHODS:
        params = EQ_PARAMS if m == "eq" else {}
        rows.append((f"{m}", {"calibration.method": m, "calibration.params": params,
                              "calibration.refine": "none"}))
        rows.append((f"{m} + cosine check", {"calibration.method": m,
                                             "calibration.params": params}))
    for m in ("minmax", "percentile", "mse"):
        rows.append((f"{m} + bias corr.", {"calibration.method": m, "calibration.refine": "none",
                                           "quantize.bias_correction": True}))
    for m in ("minmax", "kl", "percentile", "mse"):
        rows.append((f"{m} + cosine check + bias corr.", {"calibration.method": m,
                                                          "quantize.bias_correction": True}))
    rows.append(("kl + cosine check, 25 calibration inputs (memory does not grow with them)",
                 {"calibration.count": 25}))
    rows.append(("kl + cosine check, mix weights (= per-channel in ptqconv)",
                 {"quantize.weights": "mix"}))
    rows.append(("kl + cosine check, per-tensor weights", {"quantize.weights": "per-tensor"}))
    rows.append(("kl + cosine check, per-tensor weights + bias corr.",
                 {"quantize.weights": "per-tensor", "quantize.bias_correction": True}))
    rows.append(("kl + cosine check, per-tensor weights + CLE",
                 {"quantize.weights": "per-tensor", "quantize.equalize": True,
                  "quantize.equalize_clip": True}))
    rows.append(("kl + cosine check, per-tensor weights + CLE + bias corr.",
                 {"quantize.weights": "per-tensor", "quantize.equalize": True,
                  "quantize.equalize_clip": True, "quantize.bias_correction": True}))
    rows.append(("kl + cosine check, per-channel + CLE", {"quantize.equalize": True,
                                                         "quantize.equalize_clip": True}))
    rows.append(("kl + cosine check, admm weights", {"quantize.weight_method": "admm"}))
    for gran in ("per-channel", "per-tensor"):  # TNN's seed configuration (no cosine check)
        rows.append((f"TNN-like: kl-mnn + admm weights, {gran}",
                     {"calibration.method": "kl-mnn", "calibration.refine": "none",
                      "quantize.weight_method": "admm", "quantize.weights": gran}))
    for m in ("kl", "mse"):
        rows.append((f"{m} + cosine check, 4-bit weights (w4a8)",
                     {"calibration.method": m, "quantize.weight_bits": 4}))
        rows.append((f"{m} + cosine check, 4-bit weights (w4a8) + bias corr.",
                     {"calibration.method": m, "quantize.weight_bits": 4,
                      "quantize.bias_correction": True}))
    for wm in ("admm", "mse"):
        rows.append((f"kl + cosine check, 4-bit {wm} weights (w4a8) + bias corr.",
                     {"quantize.weight_bits": 4, "quantize.weight_method": wm,
                      "quantize.bias_correction": True}))
    rows.append(("kl + cosine check, mse weights (8-bit)", {"quantize.weight_method": "mse"}))
    return rows


def child(args) -> int:
    """Convert one configuration (run in a subprocess); print time and peak RSS as JSON."""
    import ptqconv
    spec = json.loads(args.child)
    t0 = time.perf_counter()
    ptqconv.convert(spec["config"], **spec["overrides"])
    elapsed = time.perf_counter() - t0
    print("RESULT " + json.dumps({"seconds": elapsed, "peak_mb": peak_rss_mb()}))
    return 0


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: VmHWM, which (unlike ru_maxrss, inherited
    across exec from the forking parent on Linux) counts only this program."""
    try:
        with open("/proc/self/status", "r", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def base_config(model_path, pre, calib_list, output, threads):
    """The job shared by every configuration of one model."""
    return {"input": str(model_path), "output": output, "to": "onnx-int8",
            "calibration": {"data": calib_list, "threads": threads, "batch_size": 1},
            "preprocess": pre.model_dump(exclude_none=True)}


def evaluate(model_path, images, threads) -> np.ndarray:
    """Class probabilities (N x classes) of an ONNX model on preprocessed ``images`` (softmax
    of the outputs unless they already are probabilities)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    rows = []
    for x in images:
        y = np.asarray(sess.run(None, {name: x[None]})[0], np.float64).reshape(-1)
        if y.min() < 0 or abs(y.sum() - 1) > 1e-3:
            y = np.exp(y - y.max())
            y /= y.sum()
        rows.append(y)
    return np.stack(rows)


def scores(probs, labels, ref):
    """(top-1, images whose top-1 equals the fp32 model's, mean KL(fp32 || probs))."""
    top1 = float(np.mean(probs.argmax(1) == np.asarray(labels)))
    same = int(np.sum(probs.argmax(1) == ref.argmax(1)))
    kl = float(np.mean(np.sum(ref * np.log((ref + 1e-12) / (probs + 1e-12)), axis=1)))
    return top1, same, kl


def eval_set(pre, files):
    """Preprocess the evaluation images once: (array N x C x H x W, labels)."""
    from ptqconv.core.data import load_image
    labels = imagenet_labels()
    xs = np.stack([load_image(f, pre, pre.size) for f in files])
    return xs, [labels[os.path.basename(f)] for f in files]


def run(args) -> int:
    calib, evaluation = imagenet_split()
    evaluation = evaluation[:args.eval_count]
    words = [w.strip() for w in args.only.split(",")] if args.only else []
    rows = [r for r in configurations() if not words or any(w in r[0] for w in words)]
    lines = [f"| model | configuration | top-1 (%) | drop vs fp32 (points) | same top-1 as fp32 "
             f"| output KL vs fp32 | convert time (s) | peak RSS (MB) |",
             "|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        calib_list = os.path.join(tmp, "calib.txt")
        Path(calib_list).write_text("\n".join(calib[:args.calib_count]) + "\n")
        for model in args.models:
            path, pre = MODELS[model]
            images, labels = eval_set(pre, evaluation)
            ref = evaluate(path, images, args.threads)
            fp32 = scores(ref, labels, ref)[0]
            lines.append(f"| {model} | fp32 | {100 * fp32:.2f} | - | {len(labels)} | 0 | - | - |")
            print(lines[-1], flush=True)
            for label, overrides in rows:
                out = os.path.join(tmp, "model_int8.onnx")
                spec = {"config": base_config(path, pre, calib_list, out, args.threads),
                        "overrides": dict(overrides)}
                proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                                      capture_output=True, text=True)
                result = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if proc.returncode != 0 or not result:
                    err = (proc.stderr.strip().splitlines() or ["?"])[-1]
                    lines.append(f"| {model} | {label} | failed: {err} | | | | | |")
                else:
                    r = json.loads(result[0][7:])
                    top1, same, kl = scores(evaluate(out, images, args.threads), labels, ref)
                    lines.append(f"| {model} | {label} | {100 * top1:.2f} | "
                                 f"{100 * (fp32 - top1):+.2f} | {same} | {kl:.4f} | "
                                 f"{r['seconds']:.1f} | {r['peak_mb']:.0f} |")
                print(lines[-1], flush=True)
    header = (f"# Calibration and weight methods: accuracy, time, memory\n\n"
              f"Command: `python benchmarks/algorithms_accuracy.py --threads {args.threads} "
              f"--out benchmarks/results/algorithms.md`\n\n"
              f"Calibration: first {args.calib_count} sorted images of "
              f"images/imagenet-sample; evaluation: the next {len(evaluation)}. Writer onnx-int8 "
              f"(QDQ), run by onnxruntime with {args.threads} thread(s). 'cosine check' = "
              f"`calibration.refine: cosine` (ptqconv's default); rows without it use "
              f"`refine: none`, i.e. the method alone. Weights are per-channel minmax 8-bit "
              f"unless stated; 'bias corr.' = `quantize.bias_correction: true`; 'CLE' = "
              f"`quantize.equalize: true` with `equalize_clip: true`. EQ runs with "
              f"{EQ_PARAMS}. Convert time is the whole conversion (read, calibrate, check, "
              f"correct, write); peak RSS is the converting process's (includes onnxruntime "
              f"and the model). The machine was shared with other jobs, so times are only "
              f"indicative.\n\n"
              f"Reference (TNN seed doc, SqueezeNet 1.1 on the ImageNet validation set, 63 "
              f"calibration images; compare drops, not absolute values): fp32 55.71; KL + ADMM "
              f"per-channel 51.58 (drop 4.13); per-tensor 50.23 (5.48); mix 55.37 (0.34); "
              f"min-max per-channel 54.82 (0.89).\n")
    text = header + "\n" + "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(text)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--only", help="comma-separated words; keep configurations containing one")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calib-count", type=int, default=100)
    p.add_argument("--eval-count", type=int, default=400)
    p.add_argument("--out", help="write the markdown table here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    return child(args) if args.child else run(args)


if __name__ == "__main__":
    sys.exit(main())
