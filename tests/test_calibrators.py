"""Activation calibrators: the worked examples of specs/algorithms.md §7 and edge cases."""
import math

import numpy as np
import pytest

from ptqconv.core.numeric import QuantSpec
from ptqconv.core.plugins import get_registry
from ptqconv.core.stats import TensorStats
from ptqconv.plugins.calibrators import aciq
from ptqconv.plugins.calibrators.admm import FEATURE_INIT, admm_steps
from ptqconv.plugins.calibrators.ema import EmaRange, nudged_range
from ptqconv.plugins.calibrators.kl import kl_best_bin, kl_divergences, kl_threshold
from ptqconv.plugins.calibrators.search import mse_threshold, percentile_threshold

INT8 = QuantSpec(8, True, True)
INT8_ASYM_OK = QuantSpec(8, True, True, allow_asymmetric=True)
UINT8 = QuantSpec(8, False, False)
METHODS = ("minmax", "kl", "kl-mnn", "kl-tengine", "kl-mindspore", "aciq", "admm", "ema",
           "percentile", "mse", "eq")

TINY = np.array([0, 40, 30, 20, 10, 8, 6, 4, 3, 2, 1, 1, 0, 0, 0, 1], dtype=np.float64)


def full_histogram():
    k = np.arange(2048)
    h = np.floor(1e6 * np.exp(-k / 60.0))
    h[2047] += 50
    return h


def cubic():
    """§7.3's x: sign(k) * (|k|/1000)^3 for k = -1000..1000."""
    k = np.arange(-1000, 1001)
    return np.sign(k) * (np.abs(k) / 1000.0) ** 3


def calibrate(method, arrays, spec=INT8, params=None):
    """Stream ``arrays`` (batches) through a registered calibrator like the engine does."""
    cal = get_registry().get("calibrators", method)
    stats = TensorStats("t", hist_samples=0)
    if cal.observer is not None:
        stats.extra = cal.observer("t")
    for a in arrays:
        a = np.asarray(a, dtype=np.float32)
        stats.update(a)
        if stats.extra is not None:
            stats.extra.update(a)
    return cal.compute(stats, spec, dict(cal.params, **(params or {}))), stats


# ---- KL (§7.1) -----------------------------------------------------------------------------

@pytest.mark.parametrize("variant,best,kl,t", [
    ("ncnn", 13, 0.254465, 3.375), ("mnn", 13, 0.255271, 3.375),
    ("tengine", 11, 0.037439, 2.875), ("mindspore-tool", 11, 1.021438, 2.875),
    ("mindspore", 11, 0.021438, 2.875)])  # without the tool's +1 for the empty bin 0
def test_kl_tiny_histogram(variant, best, kl, t):
    i, value = kl_best_bin(TINY, 4, variant)
    assert i == best
    assert value == pytest.approx(kl, abs=1e-6)
    assert (i + 0.5) * 4.0 / 16 == pytest.approx(t)


def test_kl_ncnn_every_candidate():
    expected = [0.457532, 0.407493, 0.382092, 0.343850, 0.320153, 0.293401, 0.286895, 0.271502,
                0.269467, 0.254465, 0.260488, 0.257473]
    np.testing.assert_allclose(kl_divergences(TINY, 4, "ncnn"), expected, atol=1e-6)


@pytest.mark.parametrize("variant,best,multiplier,step", [
    ("ncnn", 620, 20.958582, 0.04771315), ("mnn", 678, 19.166986, 0.05217304),
    ("tengine", 678, 19.166986, 0.05217304), ("mindspore", 667, 19.482846, 0.05132720),
    ("mindspore-tool", 667, 19.482846, 0.05132720)])
def test_kl_full_histogram(variant, best, multiplier, step):
    i, _ = kl_best_bin(full_histogram(), 128, variant)
    assert i == best
    t = (i + 0.5) * 20.0 / 2048
    assert 127 / t == pytest.approx(multiplier, rel=1e-6)
    assert t / 127 == pytest.approx(step, rel=1e-6)


def test_kl_threshold_from_streamed_stats_matches_direct_histogram():
    """Data whose ``|x|`` histogram on [0, absmax] is §7.1's tiny one, fed in several batches
    with a growing absmax: the streamed statistics give the same threshold."""
    rng = np.random.default_rng(0)
    centres = (np.arange(2048) + 0.5) * (20.0 / 2048)
    counts = np.floor(200 * np.exp(-np.arange(2048) / 60.0)).astype(int)
    values = np.repeat(centres, counts) * rng.choice([-1, 1], counts.sum())
    values = np.concatenate([values, [20.0]])
    direct = np.histogram(np.abs(values), bins=2048, range=(0, 20.0))[0]
    i_direct, _ = kl_best_bin(direct, 128, "ncnn")
    order = np.argsort(np.abs(values))  # small values first: the range grows batch by batch
    stats = TensorStats("t", hist_samples=0)
    for part in np.array_split(values[order], 10):
        stats.update(part.astype(np.float32))
    t = kl_threshold(stats, 2048, 128, "ncnn")
    assert abs(t - (i_direct + 0.5) * 20.0 / 2048) <= 2 * 20.0 / 2048  # about one bin


def integer_pixel_input(seed=0):
    """A network input as image preprocessing makes it: integer pixels minus a per-channel mean,
    times a norm. Its |x| takes a few hundred distinct values: most of 2048 bins are empty."""
    px = np.clip(np.random.default_rng(seed).normal(110, 60, (4, 3, 32, 32)).round(), 0, 255)
    mean = np.array([123.675, 116.28, 103.53])[None, :, None, None]
    return (px - mean) * 0.017125


@pytest.mark.parametrize("method", ["kl", "kl-mnn", "kl-tengine", "kl-mindspore"])
def test_kl_on_a_discrete_valued_tensor_does_not_clip_it(method):
    """MindSpore adds 1 per seed-only bin below the candidate (the seed stays in P, Q has none
    there): on integer pixels the smallest candidate wins, T = 6% of the range. ptqconv's
    kl-mindspore treats seed-only bins as empty in P as in Q; ``seed_penalty`` keeps the tool's
    rule."""
    x = integer_pixel_input()
    aq, stats = calibrate(method, [x])
    assert np.count_nonzero(stats.resampled(2048, stats.absmax)) < 1024
    assert aq.threshold > 0.5 * stats.absmax
    if method == "kl-mindspore":
        tool, _ = calibrate(method, [x], params={"seed_penalty": True})
        assert tool.threshold < 0.1 * stats.absmax
        # a tensor occupying every bin: the tool's rule never fires, the same threshold
        y = np.random.default_rng(3).uniform(-1, 1, size=(4, 8, 64, 64))
        assert calibrate(method, [y])[0].threshold == \
            calibrate(method, [y], params={"seed_penalty": True})[0].threshold


def test_kl_is_not_minmax_on_heavy_tails():
    """§7.5: ptqconv's entropy does not degenerate to min-max on a heavy-tailed input."""
    x = np.random.default_rng(0).standard_cauchy(10000)
    aq, stats = calibrate("kl", [x])
    assert aq.threshold < 0.5 * stats.absmax


# ---- ACIQ (§7.2) ---------------------------------------------------------------------------

@pytest.mark.parametrize("absmax,n,sigma,t,multiplier,step", [
    (6.0, 200704, 1.311828536, 5.147663895, 24.671385, 0.040532787),
    (1.0, 27, 0.420817166, 1.651302188, 76.909000, 0.013002379),
    (10.0, 1000, 2.906750989, 11.406198839, 11.134297, 0.089812589)])
def test_aciq_gauss(absmax, n, sigma, t, multiplier, step):
    assert aciq.GAUSS_C == pytest.approx(0.540208362, abs=1e-9)
    assert aciq.gauss_sigma(absmax, n) == pytest.approx(sigma, rel=1e-8)
    value = aciq.aciq_gauss_threshold(absmax, n, 8)
    assert value == pytest.approx(t, rel=1e-8)
    assert 127 / value == pytest.approx(multiplier, rel=1e-6)
    assert value / 127 == pytest.approx(step, rel=1e-7)


def test_aciq_six_bit_laplace_and_degenerate_n():
    t6 = aciq.aciq_gauss_threshold(1.0, 576, 6)
    assert t6 == pytest.approx(0.996022427, rel=1e-8)
    assert 31 / t6 == pytest.approx(31.123797, rel=1e-6)
    lap = aciq.aciq_laplace_threshold(0.5, 8)
    assert lap == pytest.approx(4.94837991, rel=1e-8)
    assert lap / 127 == pytest.approx(0.0389636213, rel=1e-8)
    assert aciq.aciq_gauss_threshold(3.0, 1, 8) == 3.0  # N = 1: no estimate, absmax


def test_aciq_calibrator_uses_per_input_size_and_clamps():
    """A 3x3x3 tensor with absmax 1: the seed rule gives T = 1.6513 (> absmax); ptqconv clamps
    by default and reproduces the tools with clamp: false."""
    x = np.zeros((1, 3, 3, 3), np.float32)
    x[0, 0, 0, 0] = 1.0
    x[0, 1, 1, 1] = -0.5
    seed, _ = calibrate("aciq", [x, x], params={"clamp": False})
    assert seed.threshold == pytest.approx(1.651302188, rel=1e-6)
    native, _ = calibrate("aciq", [x, x])
    assert native.threshold == pytest.approx(1.0)
    lap, stats = calibrate("aciq", [x], params={"distribution": "laplace", "clamp": False})
    assert lap.threshold == pytest.approx(9.89675982 * 1.5 / 27, rel=1e-6)


# ---- ADMM (§7.3) ---------------------------------------------------------------------------

@pytest.mark.parametrize("extra,t", [(None, 0.988713), (2.0, 1.879794), (16.0, 15.838278)])
def test_admm_features_raw(extra, t):
    x = cubic() if extra is None else np.append(cubic(), extra)
    step, _ = admm_steps(x, np.abs(x).max() / (127 * FEATURE_INIT), 127, 300)
    assert step[0] * 127 == pytest.approx(t, abs=1e-6)
    if extra == 16.0:
        assert step[0] == pytest.approx(0.124710853, abs=1e-9)


@pytest.mark.parametrize("extra,t", [(None, 0.988713), (2.0, 1.879794), (16.0, 15.838278)])
def test_admm_calibrator_on_histogram_is_close(extra, t):
    x = cubic() if extra is None else np.append(cubic(), extra)
    aq, _ = calibrate("admm", [x])
    assert aq.threshold == pytest.approx(t, rel=0.01)


# ---- MSE (§7.4) and percentile -------------------------------------------------------------

@pytest.mark.parametrize("extra,t,sse", [(None, 1.0, 0.0094838), (2.0, 1.98, 0.0364835),
                                          (16.0, 15.84, 2.053417)])
def test_mse_raw(extra, t, sse):
    x = cubic() if extra is None else np.append(cubic(), extra)
    best, err = mse_threshold(x, None, np.abs(x).max(), 127)
    assert best == pytest.approx(t)
    assert err == pytest.approx(sse, rel=1e-5)


def test_mse_calibrator_on_histogram():
    x = np.append(cubic(), 16.0)
    aq, _ = calibrate("mse", [x])
    assert aq.threshold == pytest.approx(15.84, abs=0.17)  # within one candidate step


def test_percentile_interpolates_inside_the_bin():
    x = np.linspace(-1.0, 1.0, 200001)  # |x| uniform on [0, 1]; one exact zero
    stats = TensorStats("t", hist_samples=0)
    stats.update(x)
    assert percentile_threshold(stats, 99.0) == pytest.approx(0.99, abs=1e-4)
    assert percentile_threshold(stats, 50.0) == pytest.approx(0.5, abs=1e-4)
    aq, _ = calibrate("percentile", [x], params={"percentile": 90})
    assert aq.threshold == pytest.approx(0.9, abs=1e-4)
    default, _ = calibrate("percentile", [x])
    assert default.threshold == pytest.approx(0.9999, abs=1e-4)


def test_percentile_counts_zeros():
    x = np.concatenate([np.zeros(900), np.linspace(0.01, 1.0, 100)])
    stats = TensorStats("t", hist_samples=0)
    stats.update(x)
    assert percentile_threshold(stats, 90.0) < 0.02  # 90% of the values are exact zeros
    assert percentile_threshold(stats, 95.0) == pytest.approx(0.5, abs=0.02)


# ---- EMA (§2.6) ----------------------------------------------------------------------------

def test_ema_nudge_and_moving_average():
    lo, hi = nudged_range(-1.0, 3.0)
    step = 4.0 / 254
    zp = round(1.0 / step - 127)
    assert (lo, hi) == pytest.approx(((-127 - zp) * step, (127 - zp) * step))
    ema = EmaRange()
    ema.update(np.array([-1.0, 3.0]))
    ema.update(np.array([0.5, 1.0]))  # nudged to [0, 1]
    assert ema.lo == pytest.approx(0.99 * lo)
    assert ema.hi == pytest.approx(0.99 * hi + 0.01 * 1.0)


def test_ema_calibrator_asymmetric_where_allowed():
    batches = [np.array([-1.0, 3.0]), np.array([-0.5, 2.0]), np.array([0.0, 2.5])]
    asym, _ = calibrate("ema", batches, spec=INT8_ASYM_OK)
    ema = EmaRange()
    for b in batches:
        ema.update(b)
    step = (ema.hi - ema.lo) / 254
    assert asym.signed and asym.scale == pytest.approx(step)
    assert asym.zero_point == round(-ema.lo / step - 127)
    assert (-127 - asym.zero_point) * asym.scale == pytest.approx(ema.lo, abs=step)
    sym, _ = calibrate("ema", batches, spec=INT8)
    assert sym.zero_point == 0 and sym.threshold == pytest.approx(max(-ema.lo, ema.hi))
    forced, _ = calibrate("ema", batches, spec=INT8_ASYM_OK, params={"asymmetric": False})
    assert forced.zero_point == 0
    u8, _ = calibrate("ema", batches, spec=UINT8)
    assert not u8.signed and u8.scale == pytest.approx((ema.hi - ema.lo) / 255)


# ---- edge cases, every method ---------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_all_zero_tensor_gives_step_zero(method):
    aq, _ = calibrate(method, [np.zeros((2, 4, 5, 5))])
    assert aq.scale == 0


@pytest.mark.parametrize("method", METHODS)
def test_constant_tensor(method):
    """A constant 3.0: every method keeps it representable (T close to 3, or an exact code)."""
    aq, _ = calibrate(method, [np.full((1, 2, 8, 8), 3.0)], spec=INT8_ASYM_OK)
    q = np.clip(np.round(3.0 / aq.scale) + aq.zero_point, aq.qmin, aq.qmax)
    assert (q - aq.zero_point) * aq.scale == pytest.approx(3.0, rel=0.01)


@pytest.mark.parametrize("method", METHODS)
def test_negative_only_tensor(method):
    x = -np.abs(np.random.default_rng(1).normal(size=(1, 4, 16, 16)))
    sym, stats = calibrate(method, [x])
    assert sym.zero_point == 0 and 0 < sym.threshold <= stats.absmax * (1 + 1e-6)
    u8, _ = calibrate(method, [x], spec=UINT8)
    assert not u8.signed and u8.zero_point == 255  # the range ends at 0: zero is the top code
    assert u8.scale > 0


def test_minmax_negative_only_exact():
    x = np.array([-3.0, -1.0, -0.5])
    sym, _ = calibrate("minmax", [x])
    assert sym.threshold == pytest.approx(3.0) and sym.scale == pytest.approx(3.0 / 127)
    u8, _ = calibrate("minmax", [x], spec=UINT8)
    assert u8.scale == pytest.approx(3.0 / 255) and u8.zero_point == 255


def test_kl_constant_tensor_uses_absmax():
    """Every KL candidate ties on a one-spike histogram; a threshold below every value would
    clip them all, so ptqconv uses the absmax."""
    aq, _ = calibrate("kl", [np.full(100, 2.5)])
    assert aq.threshold == pytest.approx(2.5)


@pytest.mark.parametrize("method", ["minmax", "kl", "aciq", "admm", "percentile", "mse"])
def test_low_bit_activations_and_feature_clamp(method):
    """Symmetric methods map T to the largest code: 2^(bits-1)-1, or MNN's feature clamp."""
    x = np.random.default_rng(2).laplace(size=(2, 8, 16, 16))
    for spec, qmax in ((QuantSpec(4), 7), (QuantSpec(6), 31), (QuantSpec(8, clamp=100), 100)):
        aq, stats = calibrate(method, [x], spec=spec)
        assert aq.bits == spec.bits and 0 < aq.threshold <= stats.absmax * (1 + 1e-6)
        assert aq.scale == pytest.approx(aq.threshold / qmax)
    four, _ = calibrate(method, [x], spec=QuantSpec(4))
    eight, _ = calibrate(method, [x], spec=QuantSpec(8))
    if method in ("aciq", "mse", "admm"):  # the bit width changes the optimal clip
        assert four.threshold < eight.threshold


def test_every_method_is_registered_with_a_description():
    reg = get_registry()
    for m in METHODS:
        assert reg.calibrators[m].description
    assert reg.calibrators["eq"].refine is not None
    assert math.isclose(reg.calibrators["aciq"].observer("x").per_sample, 0)


def test_kl_with_fewer_values_than_bins_keeps_the_absmax():
    # 36 values (a pooled FC input on 6 images) over 2048 bins: no meaningful divergence
    rng = np.random.default_rng(3)
    small = TensorStats("t", hist_samples=0)
    small.update(np.abs(rng.normal(0, 1, 36)).astype(np.float32))
    assert kl_threshold(small, 2048, 128, "ncnn") == pytest.approx(small.absmax)
    many = TensorStats("t", hist_samples=0)
    many.update(np.abs(rng.normal(0, 1, 200000)).astype(np.float32))
    assert kl_threshold(many, 2048, 128, "ncnn") < 0.95 * many.absmax
