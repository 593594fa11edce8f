"""Shared fixtures: the ../shared data set (tests skip cleanly without it) and the split."""
import os
from pathlib import Path

import pytest

from ptqconv.core.config import Preprocess

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("PTQCONV_SHARED", ROOT.parent / "shared")) / "data"
IMAGENET = SHARED / "images" / "imagenet-sample"
CALIB_COUNT = 100

# Preprocessing presets of shared/data/MANIFEST.md
TORCHVISION = Preprocess(pixel="RGB", resize_short=256, size=[224, 224],
                         mean=[123.675, 116.28, 103.53], norm=[0.017125, 0.017507, 0.017429])
CAFFE_BGR227 = Preprocess(pixel="BGR", size=[227, 227], mean=[104.0, 117.0, 123.0])
CAFFE_BGR224 = Preprocess(pixel="BGR", size=[224, 224], mean=[103.94, 116.78, 123.68],
                          norm=[0.017, 0.017, 0.017])


def shared_path(*parts) -> Path:
    """Return a path inside ../shared/data, skipping the test if it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not available: {p}")
    return p


def imagenet_labels():
    """{file name: class index} of the shared ImageNet sample (skips without it)."""
    path = shared_path("images", "imagenet-sample", "labels.txt")
    return {ln.split("\t")[0]: int(ln.split("\t")[1])
            for ln in path.read_text().splitlines() if ln.strip()}


def imagenet_split():
    """(calibration files, evaluation files): first 100 sorted names, then the other 400."""
    names = sorted(imagenet_labels())
    files = [str(IMAGENET / n) for n in names]
    return files[:CALIB_COUNT], files[CALIB_COUNT:]


@pytest.fixture
def calib_list(tmp_path):
    """A list file naming the 100 calibration images."""
    calib, _ = imagenet_split()
    p = tmp_path / "calib.txt"
    p.write_text("\n".join(calib) + "\n")
    return str(p)
