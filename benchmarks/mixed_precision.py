"""Diagnosis and automatic mixed precision on MobileNetV2 quantized with per-tensor weights.

Run from the project root (needs ../shared/data; about 5-10 minutes on 2 cores):

    python benchmarks/mixed_precision.py [--budget 0.3] [--threads 2] [--out out/mixed_precision]

Steps (config ``configs/mobilenet_v2_onnx_int8.yaml`` with ``quantize.weights: per-tensor``,
a setting known to hurt; evaluation = the 400 sorted images 101-500, calibration = images 1-100):

1. ``ptqconv diagnose`` equivalent: per-tensor table calibrated on images 1-100, diagnosis on 16
   evaluation images, report ``per_tensor_report.md``: which layers are responsible.
2. all-int8 per-tensor and per-channel models: top-1 on the 400 evaluation images.
3. ``quantize.auto_mixed: {metric: top1, budget: B}``: calibration on images 1-50, images
   51-100 held aside for the search; the written model's top-1 on the 400 evaluation images,
   how many convolutions stay int8, and the report ``mixed_report.md`` (which layers stayed
   float and why).

Prints a results table (top-1 drop against fp32, measured by ``ptqconv eval``'s code path).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("PTQCONV_SHARED", ROOT.parent / "shared")) / "data"
IMAGES = SHARED / "images" / "imagenet-sample"
MODEL = SHARED / "models" / "mobilenet_v2" / "mobilenet_v2.onnx"
CONFIG = ROOT / "configs" / "mobilenet_v2_onnx_int8.yaml"
CALIB = 100


def top1(model: Path, threads: int):
    """Top-1 (%) and counts on the 400 evaluation images, in onnxruntime."""
    from ptqconv.core.evaluate import evaluate
    r = evaluate([str(model)], str(IMAGES), config=str(CONFIG), skip=CALIB)
    return 100.0 * r.top1 / r.n, r.top1, r.n


def int8_convs(table, graph) -> tuple:
    """(int8 convolutions, all convolutions) of ``graph`` under ``table``."""
    convs = [n for n in graph.nodes if n.op == "Conv"]
    return sum(table.is_quantized(n.name) for n in convs), len(convs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=0.3, help="allowed top-1 drop (points)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "out" / "mixed_precision"))
    args = p.parse_args(argv)
    if not MODEL.exists():
        print(f"shared data not found: {MODEL}", file=sys.stderr)
        return 1
    import ptqconv
    from ptqconv.core import log
    from ptqconv.core.config import load_config
    from ptqconv.core.diagnose.jobs import diagnose_and_report

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = {"calibration.threads": args.threads, "quantize.weights": "per-tensor"}
    rows, t0 = [], time.perf_counter()

    fp32, fp32_n, n = top1(MODEL, args.threads)
    rows.append(["fp32 (onnxruntime)", f"{fp32:.2f}% ({fp32_n}/{n})", "-", "-"])

    # 1-2. per-tensor, all int8: diagnosis on 16 evaluation images, then top-1 on all 400
    log.step("per-tensor int8, all layers")
    pt = ptqconv.convert(str(CONFIG), output=str(out / "per_tensor.onnx"), **common)
    cfg = load_config(str(CONFIG), **common)
    files = sorted(str(IMAGES / f) for f in os.listdir(IMAGES) if f.endswith(".JPEG"))
    diag = diagnose_and_report(cfg, pt.graph, pt.table, [files[CALIB:CALIB + 16]],
                               str(out / "per_tensor_report.md"))
    worst = diag.ranked()[:5]
    acc, k, _ = top1(out / "per_tensor.onnx", args.threads)
    kept, convs = int8_convs(pt.table, pt.graph)
    rows.append(["per-tensor, all int8", f"{acc:.2f}% ({k}/{n})", f"{fp32 - acc:+.2f}",
                 f"{kept}/{convs}"])

    log.step("per-channel int8, all layers (reference)")
    pc = ptqconv.convert(str(CONFIG), output=str(out / "per_channel.onnx"),
                         **{**common, "quantize.weights": "per-channel"})
    acc, k, _ = top1(out / "per_channel.onnx", args.threads)
    kept, convs = int8_convs(pc.table, pc.graph)
    rows.append(["per-channel, all int8", f"{acc:.2f}% ({k}/{n})", f"{fp32 - acc:+.2f}",
                 f"{kept}/{convs}"])

    # 3. automatic mixed precision with a top-1 budget on held-aside calibration images
    log.step(f"per-tensor with auto_mixed top1 budget {args.budget}")
    mixed = ptqconv.convert(str(CONFIG), output=str(out / "mixed.onnx"),
                            report=str(out / "mixed_report.md"),
                            save_table=str(out / "mixed_table.json"),
                            **{**common, "calibration.labels": str(IMAGES / "labels.txt"),
                               "quantize.auto_mixed": {"metric": "top1", "budget": args.budget}})
    acc, k, _ = top1(out / "mixed.onnx", args.threads)
    kept, convs = int8_convs(mixed.table, mixed.graph)
    rows.append([f"per-tensor, auto_mixed top1 <= {args.budget:g}", f"{acc:.2f}% ({k}/{n})",
                 f"{fp32 - acc:+.2f}", f"{kept}/{convs}"])
    am = mixed.table.meta["auto_mixed"]

    from ptqconv.core.diagnose.render import text_table
    print(f"\nMobileNetV2, top-1 on the {n} evaluation images (sorted images "
          f"{CALIB + 1}-{CALIB + n}); {time.perf_counter() - t0:.0f}s")
    print(text_table(["model", "top-1", "drop (points)", "int8 convs"], rows))
    print("\nper-tensor diagnosis, most sensitive layers: " + ", ".join(
        f"{r.name} ({'depthwise' if r.depthwise else r.op})" for r in worst))
    print(f"auto_mixed: {len(am['float_layers'])} float layer(s) {am['float_layers']}, "
          f"{am['passes']} pass(es) over {am['inputs']} held-aside image(s); trials "
          + "; ".join(f"k={t[0]}: drop {t[1]:.2f} ({t[4]}){'' if t[2] else ' over'}"
                      for t in am["trials"]))
    for name in am["float_layers"]:
        print(f"  {name}: {am['reasons'][name]}")
    print(f"\nreports: {out / 'per_tensor_report.md'}, {out / 'mixed_report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
