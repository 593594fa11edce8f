"""Streaming statistics: constant memory, exact re-binning, edge cases (algorithms.md §1.2, §8)."""
import numpy as np
import pytest

from ptqconv.core.stats import TensorStats


def _feed(batches, **kw):
    s = TensorStats("t", **kw)
    for b in batches:
        s.update(b)
    return s


def test_rebinning_equals_direct_histogram_with_final_width():
    rng = np.random.default_rng(0)
    data = [rng.normal(0, 0.5 * (k + 1), 5000).astype(np.float32) for k in range(10)]
    many = _feed(data, hist_samples=0)
    first = _feed(data[:1], hist_samples=0)
    k = many.bin_width / first.bin_width
    assert k > 1 and k == 2 ** round(np.log2(k))  # widened by a power of two
    assert many.hist_range >= many.absmax
    mag = np.abs(np.concatenate(data)).astype(np.float32)
    mag = mag[mag != 0]
    idx = np.minimum((mag * np.float32(1 / many.bin_width)).astype(np.int64), 2047)
    direct = np.bincount(idx, minlength=2048)
    # the same bins up to float rounding of values sitting exactly on an edge
    assert np.abs(many.hist - direct).sum() <= 4
    assert many.hist.sum() == mag.size


def test_summary_statistics_are_exact():
    x = np.array([[-3.0, 0.0, 1.0], [2.0, 0.0, 0.5]], np.float32)
    s = _feed([x[:1], x[1:]])
    assert (s.min, s.max, s.absmax, s.count) == (-3.0, 2.0, 3.0, 6)
    assert s.zero_count == 2 and s.sum == pytest.approx(0.5) and s.sum_abs == pytest.approx(6.5)


def test_nan_and_inf_are_counted_and_excluded():
    s = _feed([np.array([1.0, np.nan, -np.inf, 2.0], np.float32)])
    assert (s.nan_count, s.inf_count, s.count, s.max) == (1, 1, 2, 2.0)


def test_all_zero_tensor_has_no_histogram_range():
    s = _feed([np.zeros(100, np.float32)])
    assert s.absmax == 0.0 and s.bin_width == 0.0 and s.zero_count == 100


def test_negative_only_tensor_uses_magnitudes():
    s = _feed([-np.linspace(0.1, 4.0, 400).astype(np.float32)])
    assert s.absmax == pytest.approx(4.0) and s.max < 0
    assert s.hist.sum() == 400


def test_sampling_keeps_exact_range_and_memory_is_fixed():
    x = np.random.default_rng(1).normal(size=1_000_000).astype(np.float32)
    s = _feed([x, x * 2], hist_samples=4096)
    assert s.absmax == pytest.approx(float(np.abs(x * 2).max()))
    assert s.count == 2_000_000 and s.hist.nbytes == 2048 * 8
    assert s.hist.sum() + s.zero_count <= 2 * 4096 + 2


def test_resampled_preserves_mass_and_range():
    x = np.random.default_rng(2).uniform(-1, 1, 400_000).astype(np.float32)
    s = _feed([x[:100], x], hist_samples=0)
    r = s.resampled(2048, s.absmax)
    assert r.sum() == pytest.approx(s.hist.sum())
    # uniform data: every resampled bin gets about the same share
    assert r[100:1900].std() / r[100:1900].mean() < 0.2


def test_exact_two_pass_statistics_equal_numpy_over_all_inputs(tmp_path):
    """collect_stats(exact=True): ranges reduced inside onnxruntime, then every |x| binned on
    [0, absmax]; the result equals numpy over the concatenated activations."""
    from ptqconv.core.calibrate import collect_stats
    from ptqconv.core.convert import calibration_data
    from ptqconv.core.config import load_config
    from ptqconv.core.ir.onnx_bridge import from_onnx
    from ptqconv.core.runtime import make_session
    import onnx
    from synthetic import tiny_cnn
    model = tiny_cnn(tmp_path / "t.onnx")
    rng = np.random.default_rng(2)
    (tmp_path / "c").mkdir()
    for k in range(5):
        np.save(tmp_path / "c" / f"x{k}.npy", rng.normal(0, 1, (1, 3, 16, 16)).astype(np.float32))
    graph = from_onnx(onnx.load(model))
    cfg = load_config({"input": model, "calibration": {"data": str(tmp_path / "c")}})
    data = calibration_data(cfg, graph)
    watched = ["input", "r1", "r2"]
    stats = collect_stats(graph, watched, data, exact=True)
    session = make_session(graph, extra_outputs=["r1", "r2"])
    values = {t: [] for t in watched}
    for feed in data.batches():
        out = dict(zip(["r1", "r2"], session.run(["r1", "r2"], feed)))
        values["input"].append(feed["input"].ravel())
        for t in ("r1", "r2"):
            values[t].append(out[t].ravel())
    for t in watched:
        x = np.concatenate(values[t]).astype(np.float64)
        s = stats[t]
        assert s.count == x.size and s.min == pytest.approx(x.min()) and \
            s.max == pytest.approx(x.max())
        assert s.sum_abs == pytest.approx(np.abs(x).sum(), rel=1e-5)
        assert s.zero_count == int(np.sum(x == 0))
        mag = np.abs(x[x != 0]).astype(np.float32)
        idx = np.minimum((mag * np.float32(1 / s.bin_width)).astype(np.int64), s.bins - 1)
        np.testing.assert_array_equal(s.hist, np.bincount(idx, minlength=s.bins))
        assert s.hist_range >= np.abs(x).max()
