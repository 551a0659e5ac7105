"""The official evaluation protocol of each model card, in numpy and PIL (no torch, no OpenCV).

Classification (``eval_efficientvit_cls_model.py``): PIL RGB, shorter side to
``ceil(size / crop_ratio)`` (PIL bicubic, as torchvision's ``Resize`` on a PIL image), centre
crop ``size`` (torchvision's rounding), /255, ImageNet mean/std.

Segmentation (``eval_efficientvit_seg_model.py``): PIL RGB to uint8, resized with OpenCV's
``INTER_CUBIC`` when the size differs (Cityscapes: fixed 1024x2048; ADE20K: short side 512,
long side up to a multiple of 32), /255, mean/std; the logits are upsampled **bicubic,
align_corners=False** to the label's size and argmaxed there.

Both resizes here are Keys' cubic convolution (A = -0.75) on half-pixel centres with the border
replicated: the kernel of OpenCV's INTER_CUBIC and of torch's ``F.interpolate(mode="bicubic")``.
Images are filtered in float64 and rounded half-to-even to uint8, which is what OpenCV's
vectorised path computes (measured against opencv-python 5.0 on this machine: 7 of 1,049,088
values one level apart; OpenCV's own scalar fixed-point path differs from its vectorised path by
one level on ~3% of values). Logits are filtered in float32 with torch's coefficient formula,
horizontal pass first, as ``upsample_bicubic2d`` does.

When an artifact's fixed input differs from the card's protocol (seg-B1 exported at 512x1024 and
evaluated on 1024x2048 Cityscapes frames), images go to the artifact's size and the result says
the protocol differs from the paper's.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evit_deploy.data import normalise
from evit_deploy.errors import UsageError

CUBIC_A = -0.75  # OpenCV's and PyTorch's bicubic constant
LOGIT_BLOCK_BYTES = 16 * 2**20  # upsampled logits per block of rows (two such arrays live at once)


def cubic_taps(n_in: int, n_out: int, dtype: type[np.floating] = np.float64) -> tuple[np.ndarray, np.ndarray]:
    """(n_out, 4) source indices (clamped: replicated border) and Keys weights of a 1-D resize.

    Output ``i`` samples the source at ``(i + 0.5) * n_in / n_out - 0.5`` (half-pixel centres,
    ``align_corners=False``). ``dtype`` float32 reproduces torch's float32 index arithmetic (to an ulp
    or so of the weights: torch's build may fuse the polynomial's multiply-adds too).
    """
    scale = dtype(n_in / n_out)
    # scale * (i + 0.5) - 0.5 rounded once to dtype, as the fused multiply-add of torch's CPU kernel does
    real = (np.float64(scale) * (np.arange(n_out) + 0.5) - 0.5).astype(dtype)
    base = np.floor(real)
    t = (real - base).astype(dtype)
    a = dtype(CUBIC_A)

    def near(x: np.ndarray) -> np.ndarray:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: np.ndarray) -> np.ndarray:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    one = dtype(1)
    weights = np.stack([far(t + one), near(t), near(one - t), far(one - t + one)], axis=1).astype(dtype)
    index = np.clip(base.astype(np.int64)[:, None] + np.arange(-1, 3)[None, :], 0, n_in - 1)
    return index, weights


def _resize_axis(array: np.ndarray, axis: int, index: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted sum of four gathered slices along ``axis``, left to right as torch sums them."""
    shape = [1] * array.ndim
    shape[axis] = -1
    out = np.take(array, index[:, 0], axis=axis)
    out *= weights[:, 0].reshape(shape)
    for k in range(1, 4):  # in place: two arrays of the output's size at a time
        term = np.take(array, index[:, k], axis=axis)
        term *= weights[:, k].reshape(shape)
        out += term
    return out


def resize_image(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 -> ``size`` (H, W) uint8 with OpenCV INTER_CUBIC's filter (no antialiasing)."""
    height, width = size
    if pixels.shape[:2] == (height, width):
        return pixels
    rows, row_weights = cubic_taps(pixels.shape[0], height)
    cols, col_weights = cubic_taps(pixels.shape[1], width)
    wide = _resize_axis(pixels.astype(np.float64), 1, cols, col_weights)
    tall = _resize_axis(wide, 0, rows, row_weights)
    return np.clip(np.rint(tall), 0, 255).astype(np.uint8)


def upsampled_rows(logits: np.ndarray, size: tuple[int, int],
                   block_bytes: int = LOGIT_BLOCK_BYTES) -> Iterator[tuple[slice, np.ndarray]]:
    """(C, h, w) logits -> blocks of rows of their bicubic upsampling to ``size``: (rows, (C, r, W)).

    Equal to ``F.interpolate(x, size, mode="bicubic", align_corners=False)`` to float32 rounding;
    never more than ``block_bytes`` of upsampled logits exist at once.
    """
    channels, height, width = logits.shape
    out_h, out_w = size
    rows, row_weights = cubic_taps(height, out_h, np.float32)
    cols, col_weights = cubic_taps(width, out_w, np.float32)
    wide = _resize_axis(logits.astype(np.float32, copy=False), 2, cols, col_weights)
    step = max(1, block_bytes // (4 * channels * out_w))
    for start in range(0, out_h, step):
        block = slice(start, min(out_h, start + step))
        yield block, _resize_axis(wide, 1, rows[block], row_weights[block])


def upsample_argmax(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) logits -> (H, W) class ids: bicubic upsampling to the label size, then argmax.

    A NaN logit never wins (treated as -inf), so an artifact's NaNs cost accuracy, not a crash.
    """
    labels = np.empty(size, dtype=np.int64)
    for block, values in upsampled_rows(logits, size):
        np.nan_to_num(values, copy=False, nan=-np.inf, posinf=np.inf, neginf=-np.inf)
        labels[block] = values.argmax(axis=0)
    return labels


def load_rgb(path: Path) -> Any:
    """A PIL image in RGB, as the official scripts open it (no EXIF rotation)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise UsageError(f"{path}: cannot be read as an image ({err.__class__.__name__}); remove or replace it") \
            from None


@dataclass(frozen=True)
class SegmentationProtocol:
    """How an image becomes a segmentation input: a fixed size, or short side + multiple (ADE20K)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    fixed: tuple[int, int] | None = None
    short_side: int | None = None
    multiple: int | None = None

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        if self.fixed is not None:
            return self.fixed
        short, multiple = int(self.short_side or 0), int(self.multiple or 1)
        if height < width:  # the official expression, evaluated in the same order
            return short, math.ceil(width / height * short / multiple) * multiple
        return math.ceil(height / width * short / multiple) * multiple, short

    def prepare(self, image: Any) -> np.ndarray:
        """PIL RGB image -> (1, 3, h, w) float32."""
        pixels = np.asarray(image, dtype=np.uint8)
        resized = resize_image(pixels, self.input_size(*pixels.shape[:2]))
        return normalise(resized.astype(np.float32) / 255.0, self)[None]

    def describe(self) -> str:
        if self.fixed is not None:
            return f"resize to {self.fixed[0]}x{self.fixed[1]} (cubic, as OpenCV INTER_CUBIC)"
        return (f"short side {self.short_side}, long side up to a multiple of {self.multiple} "
                "(cubic, as OpenCV INTER_CUBIC)")


@dataclass(frozen=True)
class ClassificationProtocol:
    """Shorter side to ceil(size / crop_ratio) (PIL bicubic), centre crop to ``size``."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size: tuple[int, int]
    crop_ratio: float = 1.0

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        return self.size

    @property
    def resize_shorter(self) -> int:
        return math.ceil(max(self.size) / self.crop_ratio)

    def prepare(self, image: Any) -> np.ndarray:
        from PIL import Image

        crop_h, crop_w = self.size
        short = self.resize_shorter
        width, height = image.size
        if width <= height:  # torchvision's Resize(int): the long side is truncated, not rounded
            new_w, new_h = short, int(short * height / width)
        else:
            new_w, new_h = int(short * width / height), short
        if (new_w, new_h) != (width, height):
            image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
        top, left = round((new_h - crop_h) / 2.0), round((new_w - crop_w) / 2.0)  # half to even, as torchvision
        image = image.crop((left, top, left + crop_w, top + crop_h))
        return normalise(np.asarray(image, dtype=np.float32) / 255.0, self)[None]

    def describe(self) -> str:
        return (f"shorter side to {self.resize_shorter} (PIL bicubic), centre crop {self.size[0]}x{self.size[1]} "
                f"(crop ratio {self.crop_ratio:g})")


Protocol = SegmentationProtocol | ClassificationProtocol


def paper_protocol(card: Any) -> Protocol:
    """The protocol of the card's official evaluation (zoo_facts.md section 6)."""
    pre = card.preprocessing
    mean, std = tuple(pre.mean), tuple(pre.std)
    if card.task == "classification":
        return ClassificationProtocol(mean, std, tuple(card.input_size), float(pre.crop_ratio or 1.0))
    if pre.resize == "fixed":
        return SegmentationProtocol(mean, std, fixed=tuple(pre.resize_to))
    return SegmentationProtocol(mean, std, short_side=pre.resize_shorter, multiple=pre.size_multiple)


def protocol_at(card: Any, size: tuple[int, int] | None) -> Protocol:
    """The card's protocol, with the network input fixed at ``size`` (an artifact's static input)."""
    paper = paper_protocol(card)
    if size is None:
        return paper
    if isinstance(paper, ClassificationProtocol):
        return ClassificationProtocol(paper.mean, paper.std, size, paper.crop_ratio)
    return SegmentationProtocol(paper.mean, paper.std, fixed=size)
