"""The quantization table: JSON round trip, version and malformed-entry errors."""
import json

import numpy as np
import pytest

from ptqconv.core.errors import PtqconvError
from ptqconv.core.qtable import ActQuant, QuantTable, WeightQuant
from ptqconv.core.qtable_json import read_json_table, write_json_table


def test_json_round_trip(tmp_path):
    t = QuantTable(activations={"x": ActQuant(0.05, 0, 8, True, 6.35), "y": ActQuant(0.02, 3, 8, False)},
                   weights={"w": WeightQuant(np.array([0.1, 0.2], np.float32), 0, 8)},
                   precision={"conv1": "int8", "fc": "float"}, meta={"method": "kl"},
                   bias_corrections={"conv1": np.array([0.5, -0.25], np.float32)})
    path = tmp_path / "t.json"
    write_json_table(t, None, str(path))
    back = read_json_table(str(path))
    assert back.activations == t.activations
    np.testing.assert_array_equal(back.weights["w"].scales, t.weights["w"].scales)
    assert back.precision == t.precision and back.float_layers() == ["fc"]
    np.testing.assert_array_equal(back.bias_corrections["conv1"], [0.5, -0.25])
    assert back.activations["y"].qmin == 0 and back.activations["y"].qmax == 255
    assert back.activations["x"].qmin == -127


def test_wrong_version_and_malformed_entries(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"version": 99}))
    with pytest.raises(PtqconvError, match="version 99"):
        read_json_table(str(p))
    p.write_text(json.dumps({"version": 1, "activations": {"x": {"zero_point": 0}}}))
    with pytest.raises(PtqconvError, match="malformed table entry"):
        read_json_table(str(p))
    p.write_text("{not json")
    with pytest.raises(PtqconvError, match=r"line 1.*invalid JSON"):
        read_json_table(str(p))
