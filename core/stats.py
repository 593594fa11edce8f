"""Fixed-size streaming statistics of one tensor (shared specs/algorithms.md §1.2).

Memory per tensor is constant: a few float64 accumulators and a histogram of ``|x|`` with ``B``
bins whose width only grows. When a batch exceeds the covered range, every ``k`` neighbouring bins
are merged (``k`` a power of two), which loses no counts and keeps bin edges aligned: the result is
the histogram one would have built directly with the final width.

Min, max, sums and counts use every value. The histogram (and ``zero_count``, in the same units)
uses at most ``hist_samples`` values per tensor per batch, taken with a prime stride so it does
not alias with the tensor's layout; 0 means every value (exact, slower).
"""
from __future__ import annotations

import math

import numpy as np

HIST_BINS = 2048
HIST_SAMPLES = 1 << 17


class TensorStats:
    """Running min/max/absmax/sums, NaN/Inf counts, zero count and an ``|x|`` histogram."""

    def __init__(self, name: str, bins: int = HIST_BINS, histogram: bool = True,
                 hist_samples: int = HIST_SAMPLES, upper: float = 0.0):
        self.name = name
        self.bins = bins
        self.histogram = histogram
        self.hist_samples = hist_samples
        self.count = 0          # finite values seen
        self.zero_count = 0     # exact zeros among the histogrammed values (not in the histogram)
        self.nan_count = 0
        self.inf_count = 0
        self.min = math.inf
        self.max = -math.inf
        self.sum = 0.0
        self.sum_abs = 0.0
        self.sum_sq = 0.0
        self.batches = 0
        self.hist = np.zeros(bins, dtype=np.float64) if histogram else None
        # 0 until the first non-zero value arrives; ``upper`` (a known absmax) fixes it upfront
        self.bin_width = upper / bins if upper > 0 and histogram else 0.0
        while self.bin_width and self.bin_width * bins < upper:  # float rounding: never re-bin
            self.bin_width = float(np.nextafter(self.bin_width, np.inf))
        self.extra = None       # calibrator-specific streaming state (see Calibrator.observer)

    @property
    def absmax(self) -> float:
        """Largest finite magnitude seen (0 if nothing non-zero was seen)."""
        if self.count == 0:
            return 0.0
        return max(abs(self.min), abs(self.max))

    @property
    def hist_range(self) -> float:
        """Upper edge of the histogram (``bins * bin_width``)."""
        return self.bins * self.bin_width

    def update(self, x: np.ndarray) -> None:
        """Fold one batch of values (any shape) into the statistics."""
        x = np.asarray(x)
        if x.dtype != np.float32 and x.dtype != np.float64:
            x = x.astype(np.float32)
        flat = x.reshape(-1)
        if flat.size == 0:
            return
        lo, hi = flat.min(), flat.max()
        if not (math.isfinite(lo) and math.isfinite(hi)):
            finite = np.isfinite(flat)
            self.nan_count += int(np.isnan(flat).sum())
            self.inf_count += int(flat.size - finite.sum()) - int(np.isnan(flat).sum())
            flat = flat[finite]
            if flat.size == 0:
                return
            lo, hi = flat.min(), flat.max()
        self.batches += 1
        self.count += flat.size
        self.min = min(self.min, float(lo))
        self.max = max(self.max, float(hi))
        self.sum += float(flat.sum(dtype=np.float64))
        self.sum_sq += float(np.dot(flat, flat))
        sample = flat
        if self.hist_samples and flat.size > self.hist_samples:
            sample = flat[self.batches % 7::_prime_stride(flat.size, self.hist_samples)]
        mag = np.abs(sample)
        self.sum_abs += float(mag.sum(dtype=np.float64)) * (flat.size / sample.size)
        nonzero = int(np.count_nonzero(mag))
        self.zero_count += sample.size - nonzero
        if self.histogram and nonzero:
            self._add_to_histogram(mag, max(abs(float(lo)), abs(float(hi))), sample.size - nonzero)

    def add_summary(self, lo: float, hi: float, count: int, sum_abs: float) -> None:
        """Fold one batch's min, max, value count and sum of ``|x|`` (computed elsewhere, e.g.
        inside the onnxruntime graph) into the statistics."""
        self.batches += 1
        self.count += int(count)
        self.min = min(self.min, float(lo))
        self.max = max(self.max, float(hi))
        self.sum_abs += float(sum_abs)

    def add_to_histogram(self, x: np.ndarray) -> None:
        """Bin every ``|x|`` of one batch into a histogram whose range was fixed upfront
        (``upper``, the absmax of a first pass) and count its exact zeros."""
        mag = np.abs(np.asarray(x, dtype=np.float32).reshape(-1))
        zeros = mag.size - int(np.count_nonzero(mag))
        self.zero_count += zeros
        if self.histogram and self.bin_width and zeros < mag.size:
            self._add_to_histogram(mag, self.absmax, zeros)

    def _add_to_histogram(self, mag: np.ndarray, batch_absmax: float, zeros: int) -> None:
        # the range grows with the batch's true absmax (the sample may have missed the extreme)
        if self.bin_width == 0.0:
            self.bin_width = batch_absmax / self.bins
        elif batch_absmax > self.hist_range:
            k = 1 << max(0, math.ceil(math.log2(batch_absmax / self.hist_range)))
            while self.hist_range * k < batch_absmax:  # guard against log2 rounding
                k *= 2
            self.rebin(k)
        inv = np.float32(1.0 / self.bin_width)
        if not np.isfinite(inv):  # a range below float32's normal numbers: all in bin 0
            self.hist[0] += mag.size - zeros
            return
        mag *= inv
        # every value is <= the range, so an index is at most ``bins`` (the range's upper edge,
        # or float rounding just below it): fold that one extra bin into the last
        counts = np.bincount(mag.astype(np.intp), minlength=self.bins + 1).astype(np.float64)
        counts[self.bins - 1] += counts[self.bins:].sum()
        counts = counts[: self.bins]
        counts[0] -= zeros  # exact zeros are tracked in zero_count, not in the histogram
        self.hist += counts

    def rebin(self, k: int) -> None:
        """Merge every ``k`` consecutive bins (widen the bin ``k`` times)."""
        merged = self.hist.reshape(-1, k).sum(axis=1) if self.bins % k == 0 else \
            np.add.reduceat(self.hist, np.arange(0, self.bins, k))
        self.hist = np.zeros(self.bins, dtype=np.float64)
        self.hist[: merged.size] = merged
        self.bin_width *= k

    def resampled(self, bins: int, upper: float) -> np.ndarray:
        """Return the ``|x|`` histogram re-sampled onto ``bins`` equal bins over ``[0, upper]``.

        Each source bin's count is split proportionally to overlap (uniform within a bin).
        """
        if self.hist is None or self.bin_width == 0.0 or upper <= 0:
            return np.zeros(bins)
        edges_src = np.arange(self.bins + 1) * self.bin_width
        cum = np.concatenate([[0.0], np.cumsum(self.hist)])
        new_edges = np.linspace(0.0, upper, bins + 1)
        cum_new = np.interp(new_edges, edges_src, cum)
        out = np.diff(cum_new)
        out[-1] += cum[-1] - cum_new[-1]  # anything above ``upper`` lands in the last bin
        return np.maximum(out, 0.0)

    def __repr__(self):
        return (f"TensorStats({self.name!r}, n={self.count}, min={self.min:.4g}, "
                f"max={self.max:.4g}, bin_width={self.bin_width:.4g})")


_PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83,
           89, 97, 101, 103, 107, 109, 113, 127)


def _prime_stride(size: int, samples: int) -> int:
    """Smallest stride >= size/samples that is prime (or a product of no small factor)."""
    k = max(2, -(-size // samples))
    while any(k % p == 0 and k != p for p in _PRIMES):
        k += 1
    return k
