"""Config validation: unknown keys get did-you-mean, wrong types name the key, paths resolve."""
import pytest

from ptqconv.core.config import load_config
from ptqconv.core.errors import PtqconvError


def test_defaults_and_documented_keys():
    cfg = load_config({"input": "m.onnx", "calibration": {"data": "imgs", "count": 100,
                       "method": "kl", "batch_size": 1, "threads": 2},
                       "preprocess": {"pixel": "BGR", "resize_short": 256, "size": [224, 224],
                                      "mean": [1, 2, 3], "norm": [0.1, 0.1, 0.1]},
                       "quantize": {"weights": "per-tensor", "skip": ["conv1"]}})
    assert cfg.input == ["m.onnx"] and cfg.calibration.count == 100
    assert cfg.preprocess.pixel == "BGR" and cfg.quantize.skip == ["conv1"]
    assert cfg.calibration.refine == "cosine"


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(PtqconvError, match=r"unknown config key 'calibration.methd'.*did you mean 'method'"):
        load_config({"calibration": {"methd": "kl"}})
    with pytest.raises(PtqconvError, match=r"unknown config key 'outptu'.*'output'"):
        load_config({"outptu": "x"})


def test_wrong_type_names_the_key():
    with pytest.raises(PtqconvError, match=r"calibration.count"):
        load_config({"calibration": {"count": "many"}})
    with pytest.raises(PtqconvError, match=r"preprocess.pixel"):
        load_config({"preprocess": {"pixel": "CMYK"}})


def test_yaml_paths_are_relative_to_the_file(tmp_path):
    (tmp_path / "cfg.yaml").write_text("input: m.onnx\noutput: out/x.onnx\ncalibration:\n  data: imgs\n")
    cfg = load_config(str(tmp_path / "cfg.yaml"), **{"calibration.method": "minmax"})
    assert cfg.input == [str(tmp_path / "m.onnx")]
    assert cfg.calibration.data == str(tmp_path / "imgs") and cfg.calibration.method == "minmax"


def test_invalid_yaml_names_the_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("input: [a\nb: c\n")
    with pytest.raises(PtqconvError, match=r"bad.yaml \(line \d+\): invalid YAML"):
        load_config(str(p))
