"""Activation ranges that minimise int8's error, from each tensor's histogram (``int8_ranges: mse``).

A per-tensor int8 range set by the extremes (min/max) spends its 256 levels on values that
rarely occur: EfficientViT's high-resolution depthwise convolutions write a few values ten
times larger than the rest, and the rounding step every other value then pays grows with
them. Clipping the range trades a large error on those few values for a smaller step on all
the others. The range chosen here minimises the expected squared error over the calibration
values: rounding noise ``step**2 / 12`` for every value inside, the distance to the range for
every value outside. On the trained seg-B1 instrument at 512x1024 (TFLite, 28 calibration
images) it took plain int8 from 0.974 to 0.985 pixel agreement with PyTorch on unseen photos
(mIoU 0.91 -> 0.95), where int8 weights alone keep 0.995 (``benchmarks/results/int8_ranges.json``).

Target-neutral: a backend accumulates ``Histogram``s over its own tensors (fixed edges between
each tensor's min and max, so counts from image after image add up exactly) and asks for the
range.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BINS = 2048  # 8x finer than int8's levels over the full range: the clip can land between two of them
LEVELS = 256


@dataclass
class Histogram:
    """Counts of a tensor's values over ``BINS`` equal bins spanning its calibrated [low, high]."""

    low: float
    high: float
    counts: np.ndarray = field(default_factory=lambda: np.zeros(BINS, dtype=np.int64))

    def add(self, values: np.ndarray) -> None:
        """Values past the range (another runtime's kernels may round an extreme a hair further
        than calibration's did) count in the end bins instead of being dropped."""
        counts, _ = np.histogram(np.clip(values, self.low, self.high), bins=BINS, range=(self.low, self.high))
        self.counts += counts

    def mse_range(self, levels: int = LEVELS) -> tuple[float, float]:
        return mse_range(self.counts, self.low, self.high, levels)


def mse_range(counts: np.ndarray, low: float, high: float, levels: int = LEVELS) -> tuple[float, float]:
    """The [low, high] (containing 0, as int8 zero points need) whose ``levels``-level uniform
    quantisation has the least expected squared error over values distributed as ``counts``
    (equal bins over [low, high], each value taken at its bin's centre).

    Candidates are the bin edges; the error of every (low, high) pair comes from prefix sums,
    so the search is exhaustive over the grid and costs a few milliseconds a tensor.
    """
    low, high = float(low), float(high)
    if not high > low or counts.sum() == 0:
        return min(low, 0.0), max(high, 0.0)
    edges = np.linspace(low, high, counts.size + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    c = counts.astype(np.float64)
    # above[e]: the bins right of edge e (sums of c, c*x, c*x^2); below[e]: the bins left of it
    pad = np.zeros(1)
    above = [np.concatenate([np.cumsum((c * centres ** p)[::-1])[::-1], pad]) for p in range(3)]
    below = [np.concatenate([pad, np.cumsum(c * centres ** p)]) for p in range(3)]
    # a range always holds 0: with values on one side only, that end is 0 (clipping nothing)
    his = np.flatnonzero(edges >= 0.0) if high >= 0.0 else np.array([counts.size])
    los = np.flatnonzero(edges <= 0.0) if low <= 0.0 else np.array([0])
    h = edges[his] if high >= 0.0 else np.zeros(1)
    lo = edges[los] if low <= 0.0 else np.zeros(1)
    clipped_high = above[2][his] - 2 * h * above[1][his] + h * h * above[0][his]  # sum c (x - h)^2, x > h
    clipped_low = below[2][los] - 2 * lo * below[1][los] + lo * lo * below[0][los]  # sum c (lo - x)^2, x < lo
    inside = c.sum() - above[0][his][:, None] - below[0][los][None, :]
    step = (h[:, None] - lo[None, :]) / (levels - 1)
    error = step ** 2 / 12 * inside + clipped_high[:, None] + clipped_low[None, :]
    k, j = np.unravel_index(int(np.argmin(error)), error.shape)
    return float(lo[j]), float(h[k])
