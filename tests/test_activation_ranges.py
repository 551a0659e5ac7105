"""The MSE-clipped int8 range: exhaustive over the bin edges, never worse than the full range,
with the error measured after the activation that reads the tensor."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from properties.strategies import FAST, QUIET

from evit_deploy.activation_ranges import (
    BINS,
    GELU,
    HARDSWISH,
    IDENTITY,
    RELU,
    Activation,
    Histogram,
    mse_range,
)

ACTIVATIONS = {"identity": IDENTITY, "hardswish": HARDSWISH, "gelu": GELU, "relu": RELU}


def error(counts: np.ndarray, low: float, high: float, lo: float, hi: float, levels: int,
          then: Activation = IDENTITY) -> float:
    """Expected squared int8 error of the range [lo, hi] after ``then``, the naive way: value by value."""
    edges = np.linspace(low, high, counts.size + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    step = (hi - lo) / (levels - 1)
    f = then.f
    per_value = np.where(centres > hi, (f(centres) - f(np.full_like(centres, hi))) ** 2,
                         np.where(centres < lo, (f(np.full_like(centres, lo)) - f(centres)) ** 2,
                                  then.slope(centres) ** 2 * step ** 2 / 12))
    return float(np.sum(counts * per_value))


histograms = st.tuples(
    st.lists(st.integers(0, 1000), min_size=4, max_size=48).map(lambda c: np.array(c, dtype=np.int64)),
    st.floats(-20, 19), st.floats(0.01, 20), st.sampled_from([4, 16, 256]),
).map(lambda h: (h[0], h[1], h[1] + h[2], h[3])).filter(lambda h: h[0].sum() > 0)


@settings(max_examples=FAST, **QUIET)
@given(histograms, st.sampled_from(sorted(ACTIVATIONS)))
def test_the_range_holds_zero_and_is_the_least_error_of_all_edge_pairs(histogram, activation) -> None:
    counts, low, high, levels = histogram
    then = ACTIVATIONS[activation]
    lo, hi = mse_range(counts, low, high, levels, then)
    assert min(low, 0.0) - 1e-9 <= lo <= 0.0 <= hi <= max(high, 0.0) + 1e-9
    edges = np.linspace(low, high, counts.size + 1)
    los = edges[edges <= 0] if low <= 0 else [0.0]
    his = edges[edges >= 0] if high >= 0 else [0.0]
    best = min(error(counts, low, high, a, b, levels, then) for a in los for b in his)
    assert error(counts, low, high, lo, hi, levels, then) <= best * (1 + 1e-9) + 1e-12
    full = error(counts, low, high, min(low, 0.0), max(high, 0.0), levels, then)
    assert error(counts, low, high, lo, hi, levels, then) <= full * (1 + 1e-9) + 1e-12


def test_a_rare_far_value_is_clipped_and_a_uniform_spread_is_not() -> None:
    rng = np.random.default_rng(0)
    # a depthwise conv's map at 512x1024 (millions of values a tensor) and its one far value: over the
    # full range each of them rounds with an error whose squares add up past the outlier's clip
    values = np.concatenate([rng.normal(0.0, 1.0, 2_000_000), [60.0]])
    histogram = Histogram(float(values.min()), float(values.max()))
    histogram.add(values)
    lo, hi = histogram.mse_range()
    assert hi < 0.5 * values.max() and lo >= values.min() - 1e-6
    uniform = Histogram(-1.0, 3.0)
    uniform.add(rng.uniform(-1.0, 3.0, 100_000))
    lo, hi = uniform.mse_range()
    assert lo <= -0.98 and hi >= 2.95  # a clip shaves at most a few bins off an even spread


def test_a_hardswish_input_spends_no_levels_below_minus_three() -> None:
    """A conv output only a HardSwish reads: its negative tail leaves the HardSwish as 0, so the
    range stops near -3 however far the values go, and the positive side gets the levels."""
    rng = np.random.default_rng(2)
    values = rng.normal(0.0, 3.0, 1_000_000)
    histogram = Histogram(float(values.min()), float(values.max()))
    histogram.add(values)
    plain, after = histogram.mse_range(), histogram.mse_range(then=HARDSWISH)
    width = (histogram.high - histogram.low) / BINS
    assert plain[0] < -6.0 and -3.0 - 2 * width <= after[0] <= -2.5
    assert after[1] - after[0] < plain[1] - plain[0]  # a finer step on what passes
    assert histogram.mse_range(then=RELU)[0] == pytest.approx(0.0, abs=2 * width)


def test_counts_added_image_by_image_are_the_counts_of_all_values() -> None:
    rng = np.random.default_rng(1)
    images = [rng.normal(size=(3, 40)).astype(np.float32) for _ in range(4)]
    low, high = min(float(i.min()) for i in images), max(float(i.max()) for i in images)
    streamed = Histogram(low, high)
    for image in images:
        streamed.add(image)
    whole, _ = np.histogram(np.concatenate([i.ravel() for i in images]), bins=BINS, range=(low, high))
    assert np.array_equal(streamed.counts, whole)


@pytest.mark.parametrize("low, high", [(0.0, 0.0), (2.0, 5.0), (-4.0, -1.0)])
def test_degenerate_and_one_sided_ranges_still_hold_zero(low: float, high: float) -> None:
    lo, hi = mse_range(np.ones(BINS, dtype=np.int64), low, high)
    assert lo <= 0.0 <= hi
