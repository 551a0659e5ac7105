"""Error sums and layout alignment of ``evit debug``."""
from __future__ import annotations

import math

import numpy as np

from evit_deploy.debug.metrics import TensorErrors, aligned, in_shape


def test_errors_are_ratios_of_sums_over_samples():
    errors = TensorErrors()
    ref = np.ones((1, 2, 2, 2), np.float32)
    errors.update(ref * 1.1, ref)
    errors.update(np.zeros_like(ref), np.zeros_like(ref))  # an all-zero sample adds nothing, divides nothing
    assert math.isclose(errors.rel_l2, 0.1, rel_tol=1e-6)
    assert math.isclose(errors.cosine, 1.0, rel_tol=1e-9) and math.isclose(errors.max_abs, 0.1, rel_tol=1e-6)
    assert not errors.over(0.2) and errors.over(0.05)


def test_non_finite_values_are_counted_apart_and_always_divergent():
    errors = TensorErrors()
    art = np.array([1.0, np.nan, 2.0, np.inf], np.float32)
    errors.update(art, np.array([1.0, 1.0, 2.0, 1.0], np.float32))
    assert errors.nonfinite_share == 0.5 and errors.rel_l2 == 0.0  # the finite half matches
    assert errors.over(1e9)
    assert errors.to_dict()["rel_l2"] == 0.0


def test_nhwc_tensors_are_aligned_and_fed_back():
    ref = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    nhwc = ref.transpose(0, 2, 3, 1)
    assert np.array_equal(aligned(nhwc, ref.shape), ref)
    assert np.array_equal(in_shape(ref, nhwc.shape), nhwc)
    assert np.array_equal(aligned(ref[:, None], ref.shape), ref)  # a unit axis more: the same tensor
    assert aligned(ref.reshape(2, 3, 20), ref.shape) is None  # not a layout evit can undo
    assert aligned(np.zeros((2, 3, 4, 4), np.float32), ref.shape) is None
