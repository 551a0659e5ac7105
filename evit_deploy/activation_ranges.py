"""Activation ranges that minimise int8's error, from each tensor's histogram (``int8_ranges: mse``).

A per-tensor int8 range set by the extremes (min/max) spends its 256 levels on values that
rarely occur: EfficientViT's high-resolution depthwise convolutions write a few values ten
times larger than the rest, and the rounding step every other value then pays grows with
them. Clipping the range trades a large error on those few values for a smaller step on all
the others. The range chosen here minimises the expected squared error over the calibration
values: rounding noise ``step**2 / 12`` for every value inside, the distance to the range for
every value outside. On the trained seg-B1 instrument at 512x1024 (TFLite, 28 calibration
images) it takes plain int8 from 0.975 to 0.986 pixel agreement with PyTorch on unseen photos
(mIoU 0.91 -> 0.95), where int8 weights alone keep 0.995 (``benchmarks/results/int8_ranges.json``).

What counts is the error its readers see. Most of EfficientViT's quantised tensors are a conv's
output that only a HardSwish reads (GELU in the SAM encoders): every value below -3 leaves a
HardSwish as 0, whatever int8 makes of it, and rounding noise near -1.5 barely passes it. For
such a tensor the error is taken after the activation (``Activation``): clipping its negative
tail costs nothing, and the step it frees goes to the values that pass. Measured after the
activation rather than before, the instrument's plain int8 went from 0.984 to 0.986 (1.05 to 0.92
points under its bound), seeded weights' from 0.967 to 0.969.

Target-neutral: a backend accumulates ``Histogram``s over its own tensors (fixed edges between
each tensor's min and max, so counts from image after image add up exactly) and asks for the
range, naming the activation that alone reads the tensor, if one does.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

Curve = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Activation:
    """An elementwise function a quantised tensor passes through, and its derivative (how much
    of a small rounding error at x passes it)."""

    f: Curve
    slope: Curve


IDENTITY = Activation(lambda x: x, np.ones_like)
HARDSWISH = Activation(lambda x: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0,
                       lambda x: np.where(x < -3.0, 0.0, np.where(x > 3.0, 1.0, (2.0 * x + 3.0) / 6.0)))
RELU = Activation(lambda x: np.maximum(x, 0.0), lambda x: (x > 0.0).astype(np.float64))
_erf = np.vectorize(math.erf, otypes=[np.float64])
GELU = Activation(lambda x: x * 0.5 * (1.0 + _erf(x / math.sqrt(2.0))),
                  lambda x: 0.5 * (1.0 + _erf(x / math.sqrt(2.0))) + x * np.exp(-x * x / 2.0) / math.sqrt(2.0 * math.pi))


def clipping_pays(task: str) -> bool:
    """Whether ``auto`` ranges are MSE-clipped for a model of ``task``: yes for dense outputs
    (segmentation, SAM), whose answer is millions of pixels; no for classifiers, whose answer is one
    decision an image, and whose thin margins are where a clipped range shows (measured on each
    target: ``tflite.quantize.chosen_ranges``, ``onnx.int8.chosen_method``)."""
    return task != "classification"


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

    def mse_range(self, levels: int = LEVELS, then: Activation = IDENTITY) -> tuple[float, float]:
        return mse_range(self.counts, self.low, self.high, levels, then)


def mse_range(counts: np.ndarray, low: float, high: float, levels: int = LEVELS,
              then: Activation = IDENTITY) -> tuple[float, float]:
    """The [low, high] (containing 0, as int8 zero points need) whose ``levels``-level uniform
    quantisation has the least expected squared error over values distributed as ``counts``
    (equal bins over [low, high], each value taken at its bin's centre), the error measured
    after ``then``: a value clipped to h errs by ``f(x) - f(h)``, one rounded inside the range by
    ``slope(x)**2 * step**2 / 12``.

    Candidates are the bin edges; the error of every (low, high) pair comes from prefix sums,
    so the search is exhaustive over the grid and costs a few milliseconds a tensor.
    """
    low, high = float(low), float(high)
    if not high > low or counts.sum() == 0:
        return min(low, 0.0), max(high, 0.0)
    edges = np.linspace(low, high, counts.size + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    c = counts.astype(np.float64)
    fx, passed = then.f(centres), c * then.slope(centres) ** 2
    # above[e]: the bins right of edge e (sums of c, c*f, c*f^2, c*slope^2); below[e]: left of it
    pad = np.zeros(1)
    sums = [c * fx ** p for p in range(3)] + [passed]
    above = [np.concatenate([np.cumsum(s[::-1])[::-1], pad]) for s in sums]
    below = [np.concatenate([pad, np.cumsum(s)]) for s in sums]
    # a range always holds 0: with values on one side only, that end is 0 (clipping nothing)
    his = np.flatnonzero(edges >= 0.0) if high >= 0.0 else np.array([counts.size])
    los = np.flatnonzero(edges <= 0.0) if low <= 0.0 else np.array([0])
    h = edges[his] if high >= 0.0 else np.zeros(1)
    lo = edges[los] if low <= 0.0 else np.zeros(1)
    fh, flo = then.f(h), then.f(lo)
    clipped_high = above[2][his] - 2 * fh * above[1][his] + fh * fh * above[0][his]  # sum c (f(x) - f(h))^2, x > h
    clipped_low = below[2][los] - 2 * flo * below[1][los] + flo * flo * below[0][los]  # sum c (f(lo) - f(x))^2, x < lo
    inside = passed.sum() - above[3][his][:, None] - below[3][los][None, :]  # sum c slope^2 inside
    step = (h[:, None] - lo[None, :]) / (levels - 1)
    error = step ** 2 / 12 * inside + clipped_high[:, None] + clipped_low[None, :]
    k, j = np.unravel_index(int(np.argmin(error)), error.shape)
    return float(lo[j]), float(h[k])
