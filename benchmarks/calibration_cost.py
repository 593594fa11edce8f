"""Calibration cost of ptqconv: wall time against plain onnxruntime inference, and peak memory.

Run from the project root (needs ../shared/data):

    python benchmarks/calibration_cost.py [--method kl] [--threads 2]

It prints, side by side in one run:
  * plain onnxruntime fp32 inference of MobileNetV2 over the 100 calibration images (same decoding
    and preprocessing as calibration), versus ptqconv's statistics pass, threshold search and
    layer-output check over the same images;
  * peak RSS of a whole ``ptqconv`` job with 50 and with 400 calibration images (each in a fresh
    process), which must stay flat because only fixed-size statistics are kept.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
MODEL = os.path.join(SHARED, "models", "mobilenet_v2", "mobilenet_v2.onnx")
IMAGES = os.path.join(SHARED, "images", "imagenet-sample")
PREPROCESS = {"pixel": "RGB", "resize_short": 256, "size": [224, 224],
              "mean": [123.675, 116.28, 103.53], "norm": [0.017125, 0.017507, 0.017429]}

_JOB = """
import json, resource, sys, time
import ptqconv
t = time.perf_counter()
ptqconv.convert(json.loads(sys.argv[1]))
print(json.dumps({"seconds": time.perf_counter() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def time_stages(method: str, threads: int, count: int):
    """Return seconds for plain inference and for each calibration stage over ``count`` images."""
    from ptqconv.core import log
    from ptqconv.core.calibrate import collect_stats, compute_thresholds
    from ptqconv.core.config import load_config
    from ptqconv.core.convert import calibration_data, read_model
    from ptqconv.core.numeric import QuantSpec
    from ptqconv.core.plugins import get_registry
    from ptqconv.core.quantize import plan_layers
    from ptqconv.core.refine import refine_thresholds
    from ptqconv.core.runtime import make_session
    from ptqconv.core.quantize import assemble_table, weight_scales

    log.QUIET = True
    cfg = load_config({"input": MODEL, "calibration": {"data": IMAGES, "count": count,
                       "method": method, "threads": threads}, "preprocess": PREPROCESS})
    registry = get_registry()
    loaded, _, _ = read_model(registry, cfg)
    graph = registry.get("passes", "canonicalize").run(loaded.graph)
    backend = registry.get("backends", "onnxruntime")
    layers = plan_layers(graph, backend)
    data = calibration_data(cfg, graph)

    session = make_session(graph, threads=threads)
    t0 = time.perf_counter()
    for feed in data.batches():
        session.run(None, feed)
    plain = time.perf_counter() - t0

    calibrator = registry.get("calibrators", method)
    t0 = time.perf_counter()
    stats = collect_stats(graph, [layer.activation for layer in layers], data, threads, exact=True)
    stats_pass = time.perf_counter() - t0
    t0 = time.perf_counter()
    spec = QuantSpec()
    acts = compute_thresholds(calibrator, stats, spec, {}, threads)
    search = time.perf_counter() - t0
    weights = weight_scales(graph, layers, registry.get("weight_quantizers", "minmax"),
                            "per-channel", 8, backend)
    table = assemble_table(layers, acts, weights, graph.nodes, [], {})
    t0 = time.perf_counter()
    refine_thresholds(graph, table, stats, data, spec, threads, 32)
    refine = time.perf_counter() - t0
    return {"plain_inference": plain, "statistics_pass": stats_pass, "threshold_search": search,
            "layer_output_check": refine}


def peak_memory(count: int, method: str, threads: int):
    """Run a whole job with ``count`` calibration images in a fresh process; return its figures."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = {"input": MODEL, "output": os.path.join(tmp, "out.onnx"), "to": "onnx-int8",
               "calibration": {"data": IMAGES, "count": count, "method": method, "threads": threads},
               "preprocess": PREPROCESS}
        proc = subprocess.run([sys.executable, "-c", _JOB, json.dumps(cfg)], capture_output=True,
                              text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    """Parse flags, run both measurements and print the tables."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="kl")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if not os.path.exists(MODEL):
        sys.exit(f"needs the shared data set: {MODEL} not found")
    t = time_stages(args.method, args.threads, 100)
    calib = t["statistics_pass"] + t["threshold_search"]
    print(f"## Calibration time, MobileNetV2, 100 images, method {args.method}, "
          f"{args.threads} threads\n")
    print("| stage | seconds | x plain inference |\n|---|---|---|")
    for name, sec in t.items():
        print(f"| {name.replace('_', ' ')} | {sec:.2f} | {sec / t['plain_inference']:.2f} |")
    print(f"| calibration (statistics + search) | {calib:.2f} | {calib / t['plain_inference']:.2f} |")
    print("\n## Peak memory of a whole job (fresh process each)\n")
    print("| calibration images | wall seconds | peak RSS (MB) |\n|---|---|---|")
    for count in (50, 400):
        m = peak_memory(count, args.method, args.threads)
        print(f"| {count} | {m['seconds']:.1f} | {m['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
