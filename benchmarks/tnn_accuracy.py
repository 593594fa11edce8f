"""Accuracy of ptqconv's TNN int8 output, checked without a TNN runtime.

Run from the project root (needs ../shared/data; about 3-6 minutes on 2 cores):

    python benchmarks/tnn_accuracy.py [--method kl] [--weights per-channel mix per-tensor]
                                      [--bias-correction] [--compare-onnx] [--golden]
                                      [--threads 2] [--keep DIR]

Steps, each a real ``ptqconv`` command in a subprocess:
  1. MobileNetV2 ONNX -> ``tnn-int8`` calibrated on the first 100 sorted shared images
     (configs/mobilenet_v2_onnx_int8.yaml: torchvision preprocessing), once per weight merge type
     (``--weights``: per-channel = TNN's default layout, mix, per-tensor), and with
     ``--bias-correction`` once more with ``quantize.bias_correction: true``;
  2. each .tnnproto/.tnnmodel read back -> ``onnx-int8`` (QDQ) with the table stored in the TNN
     files (``ptqconv --from tnn --to onnx-int8 -i x.tnnproto -o y.onnx``);
  3. ``--compare-onnx``: ptqconv's own ``onnx-int8`` with the same settings, once with its default
     uint8 codes for non-negative tensors and once signed-only (what TNN can run);
  4. ``--golden``: TNN's own int8 MobileNetV2 (shared/data/golden/tnn) dequantized (``--to onnx``)
     and as QDQ (``--to onnx-int8``) under several preprocessings.
Top-1 on the other 400 images is printed as a table (``ptqconv eval`` code, onnxruntime).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
MODEL = os.path.join(SHARED, "models", "mobilenet_v2", "mobilenet_v2.onnx")
IMAGES = os.path.join(SHARED, "images", "imagenet-sample")
GOLDEN = os.path.join(SHARED, "golden", "tnn", "model.quantized.tnnproto")
CONFIG = os.path.join(ROOT, "configs", "mobilenet_v2_onnx_int8.yaml")
CALIB_COUNT = 100
MEAN_BGR = [103.94, 116.78, 123.68]
GOLDEN_PRESETS = {  # the Caffe MobileNetV2's own, torchvision, and raw pixels (TNN's calibration)
    "caffe-bgr224": {"pixel": "BGR", "size": [224, 224], "mean": MEAN_BGR, "norm": [0.017] * 3},
    "torchvision": {"pixel": "RGB", "resize_short": 256, "size": [224, 224],
                    "mean": [123.675, 116.28, 103.53], "norm": [0.017125, 0.017507, 0.017429]},
    "raw BGR 0..255": {"pixel": "BGR", "size": [224, 224]},
    "BGR - mean": {"pixel": "BGR", "size": [224, 224], "mean": MEAN_BGR},
}


def ptqconv(*args: str) -> float:
    """Run the ``ptqconv`` CLI; return its wall time (raises on failure)."""
    t = time.perf_counter()
    cmd = [sys.executable, "-m", "ptqconv.core.cli", "-q", *args]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{result.stderr}")
    return time.perf_counter() - t


def derived_config(work: str, name: str, **quantize) -> str:
    """The MobileNetV2 config with extra ``quantize:`` keys, written into ``work`` with
    absolute paths; returns its path."""
    import yaml
    with open(CONFIG, encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    base = os.path.dirname(CONFIG)
    cfg["input"] = os.path.normpath(os.path.join(base, cfg["input"]))
    cfg["calibration"]["data"] = os.path.normpath(os.path.join(base, cfg["calibration"]["data"]))
    cfg.pop("output", None)
    cfg.setdefault("quantize", {}).update(quantize)
    path = os.path.join(work, f"{name}.yaml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg, f)
    return path


def top1(model_path: str, preprocess=None) -> float:
    """Top-1 of an ONNX model on the 400 evaluation images (onnxruntime)."""
    from ptqconv.core.config import load_config
    from ptqconv.core.evaluate import evaluate
    config = load_config(CONFIG).model_dump(by_alias=True) if preprocess is None else \
        {"preprocess": preprocess}
    result = evaluate([model_path], IMAGES, config=config, skip=CALIB_COUNT,
                      prefer_runtime=False)
    return result.top1 / result.n


def main(argv=None) -> int:
    """Run the conversions and print the results table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="kl", help="calibration method (default kl)")
    p.add_argument("--weights", nargs="+", default=["per-channel", "per-tensor"],
                   choices=["per-channel", "mix", "per-tensor"], help="TNN merge types to run")
    p.add_argument("--bias-correction", action="store_true",
                   help="also run each merge type with quantize.bias_correction: true")
    p.add_argument("--compare-onnx", action="store_true",
                   help="also quantize straight to onnx-int8 (uint8 default and signed-only)")
    p.add_argument("--golden", action="store_true", help="also evaluate TNN's golden int8 model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--keep", help="folder to keep the produced files in")
    args = p.parse_args(argv)
    for path in (MODEL, IMAGES, CONFIG):
        if not os.path.exists(path):
            raise SystemExit(f"missing {path}")
    work = args.keep or tempfile.mkdtemp(prefix="ptqconv_tnn_")
    os.makedirs(work, exist_ok=True)
    common = ["--method", args.method, "--count", str(CALIB_COUNT), "--threads", str(args.threads)]
    rows = [("fp32 ONNX (onnxruntime)", top1(MODEL), None)]
    variants = [("", CONFIG)]
    if args.bias_correction:
        variants.append((" + bias corr.", derived_config(work, "bias_correction",
                                                        bias_correction=True)))
    for merge in args.weights:
        for suffix, cfg in variants:
            tag = f"{merge}{'_bc' if suffix else ''}"
            tnn = os.path.join(work, f"mobilenet_v2_{tag}.tnnproto")
            back = os.path.join(work, f"from_tnn_{tag}.onnx")
            t1 = ptqconv("-c", cfg, *common, "--weights", merge, "--to", "tnn-int8", "-o", tnn)
            t2 = ptqconv("--from", "tnn", "--to", "onnx-int8", "-i", tnn, "-o", back)
            rows.append((f"tnn-int8 {merge}{suffix} -> read back -> QDQ", top1(back), t1 + t2))
    if args.compare_onnx:
        signed = derived_config(work, "signed", unsigned_activations=False)
        for label, cfg in (("uint8 where >= 0", CONFIG), ("signed only", signed)):
            direct = os.path.join(work, f"direct_{label.split()[0]}.onnx")
            t3 = ptqconv("-c", cfg, *common, "--to", "onnx-int8", "-o", direct)
            rows.append((f"ptqconv onnx-int8, {label}", top1(direct), t3))
    base = rows[0][1]
    n = 500 - CALIB_COUNT
    print(f"\nMobileNetV2, {args.method} on the first {CALIB_COUNT} sorted images, top-1 on the "
          f"other {n}")
    print(f"{'model':54s} {'top-1':>7s} {'drop':>7s} {'convert s':>10s}")
    for name, acc, secs in rows:
        drop = "" if name == rows[0][0] else f"{100 * (base - acc):+.2f}"
        print(f"{name:54s} {100 * acc:6.2f}% {drop:>7s} "
              f"{'' if secs is None else f'{secs:.1f}':>10s}")
    if args.golden and os.path.exists(GOLDEN):
        fp = os.path.join(work, "golden_dequantized.onnx")
        qdq = os.path.join(work, "golden_qdq.onnx")
        ptqconv("--from", "tnn", "--to", "onnx", "-i", GOLDEN, "-o", fp)
        ptqconv("--from", "tnn", "--to", "onnx-int8", "-i", GOLDEN, "-o", qdq)
        print(f"\nTNN golden int8 MobileNetV2 (quantization_cmd output), top-1 on the same {n}")
        print(f"{'preprocessing':20s} {'dequantized fp32':>17s} {'int8 QDQ':>9s}")
        for name, pre in GOLDEN_PRESETS.items():
            print(f"{name:20s} {100 * top1(fp, pre):16.2f}% {100 * top1(qdq, pre):8.2f}%")
    print(f"files in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
