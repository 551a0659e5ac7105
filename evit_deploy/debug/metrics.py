"""Error of one artifact tensor against the reference module's output, summed over samples.

Relative L2 and cosine are ratios of sums (not means of per-sample ratios), so a sample
where the tensor is nearly zero cannot dominate; non-finite artifact values are counted
apart and left out of the sums, so one NaN does not hide how far the rest is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class TensorErrors:
    """Running sums for relative L2, cosine, max abs and the share of non-finite values."""

    diff_sq: float = 0.0
    ref_sq: float = 0.0
    art_sq: float = 0.0
    dot: float = 0.0
    max_abs: float = 0.0
    nonfinite: int = 0
    elements: int = 0

    def update(self, art: np.ndarray, ref: np.ndarray) -> None:
        a, r = art.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
        finite = np.isfinite(a)
        self.nonfinite += int(a.size - finite.sum())
        self.elements += a.size
        if not finite.all():
            a, r = a[finite], r[finite]
        d = a - r
        self.diff_sq += float(d @ d)
        self.ref_sq += float(r @ r)
        self.art_sq += float(a @ a)
        self.dot += float(a @ r)
        if d.size:
            self.max_abs = max(self.max_abs, float(np.abs(d).max()))

    @property
    def rel_l2(self) -> float:
        """||artifact - reference|| / ||reference|| (inf when the reference is all zeros but not the artifact)."""
        if self.ref_sq == 0.0:
            return 0.0 if self.diff_sq == 0.0 else math.inf
        return math.sqrt(self.diff_sq / self.ref_sq)

    @property
    def cosine(self) -> float:
        norms = math.sqrt(self.art_sq * self.ref_sq)
        return 1.0 if norms == 0.0 and self.diff_sq == 0.0 else (self.dot / norms if norms else 0.0)

    @property
    def nonfinite_share(self) -> float:
        return self.nonfinite / self.elements if self.elements else 0.0

    def over(self, threshold: float) -> bool:
        return self.nonfinite > 0 or self.rel_l2 > threshold

    def to_dict(self) -> dict[str, Any]:
        return {"rel_l2": json_float(self.rel_l2), "cosine": json_float(self.cosine),
                "max_abs": json_float(self.max_abs), "nonfinite_share": self.nonfinite_share}


def json_float(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def aligned(art: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """The artifact tensor in the reference's NCHW ``shape``, or None when the two cannot be the
    same tensor. A 4-D tensor in NHWC (TFLite keeps most activations so) is transposed back;
    unit axes may differ (a converter's 3-D view of a 4-D tensor). A tensor whose C, H and W are
    all equal reads the same either way and is taken as NCHW."""
    if art.shape == shape:
        return art
    if art.ndim == 4 and len(shape) == 4 and art.shape == _nhwc(shape):
        return art.transpose(0, 3, 1, 2)
    if art.size == math.prod(shape) and art.squeeze().shape == tuple(d for d in shape if d != 1):
        return art.reshape(shape)
    return None


def in_shape(ref: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """A reference (NCHW) tensor in an artifact tensor's ``shape``: the inverse of ``aligned``."""
    if ref.shape == shape:
        return ref
    if ref.ndim == 4 and len(shape) == 4 and shape == _nhwc(ref.shape):
        return np.ascontiguousarray(ref.transpose(0, 2, 3, 1))
    if ref.size == math.prod(shape) and ref.squeeze().shape == tuple(d for d in shape if d != 1):
        return ref.reshape(shape)
    return None


def _nhwc(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[0], shape[2], shape[3], shape[1])
