"""EfficientViT-SAM's image preprocessing, prompt coordinates and mask postprocessing in numpy.

The same steps as the official ``EfficientViTSam.transform`` / ``EfficientViTSamPredictor``
(zoo_facts.md 6.3), with no PyTorch: ``evit segment`` runs exported encoder and decoder graphs
on devices that only have a runtime.

1. ``preprocess``: long side to S (512 for L, 1024 for XL) with PIL bilinear, sizes rounded as
   ``int(x + 0.5)``; ``(x - mean) / std`` in 0..255 terms, float32 (bit-identical to the
   official input tensors of the fixtures); zero pad bottom/right to S x S.
2. ``points_to_frame`` / ``boxes_to_frame``: prompts move from the photo's pixels to the 1024
   frame the decoder was trained in, for every model.
3. ``postprocess_masks``: 256 x 256 logits -> bilinear to 1024 x 1024 -> crop the part that is
   photo, not padding -> bilinear to the photo's size. ``resize_bilinear`` reproduces
   ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` in float32 (same
   taps and weights; sums within a few units in the last place).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evit_deploy.errors import UsageError

__all__ = [
    "LOW_RES",
    "MEAN",
    "PROMPT_FRAME",
    "STD",
    "boxes_to_frame",
    "normalize",
    "pad_to_square",
    "points_to_frame",
    "postprocess_masks",
    "preprocess",
    "read_image",
    "resize_bilinear",
    "resize_longest_side",
    "resized_shape",
    "select_masks",
]

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
"""Per-channel mean and std in 0..255 terms (SAM's, RGB)."""

PROMPT_FRAME = 1024
"""Side of the square frame of prompt coordinates and of the upscaled masks, for every model
(the decoder was trained with SAM's 1024 x 1024 input); the encoder input may be 512."""

LOW_RES = 256
"""Side of the decoder's mask logits."""


def read_image(path: str | Path) -> np.ndarray:
    """An image file as H x W x 3 uint8 RGB (PIL, ``convert("RGB")`` as the official eval)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as err:
        reason = " ".join(str(err).split())[:160]
        raise UsageError(f"{path} is not an image PIL can read ({reason})") from None


def _check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 1:
        raise UsageError(f"expected an H x W x 3 uint8 RGB image, got shape {image.shape} {image.dtype}")


def resized_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) with the long side scaled to ``long_side``, each rounded as ``int(x + 0.5)``."""
    scale = long_side * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_longest_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """PIL bilinear resize (antialiased when shrinking) to ``resized_shape``; a no-op at size."""
    from PIL import Image

    _check_image(image)
    height, width = image.shape[:2]
    if max(height, width) == long_side:
        return image
    new_h, new_w = resized_shape(height, width, long_side)
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))


def normalize(image: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 -> 3 x H x W float32 ``(x - mean) / std`` in 0..255 terms.

    In float32 with float32 constants: bit-identical to the fixtures' official input tensors.
    (torchvision's ``ToTensor`` + ``Normalize(mean / 255, std / 255)`` is the same map up to the
    last bit.)
    """
    x = image.astype(np.float32).transpose(2, 0, 1)
    return (x - np.array(MEAN, dtype=np.float32)[:, None, None]) / np.array(STD, dtype=np.float32)[
        :, None, None
    ]


def pad_to_square(x: np.ndarray, size: int) -> np.ndarray:
    """C x h x w -> C x size x size with zeros bottom and right (the image keeps pixel (0, 0))."""
    channels, height, width = x.shape
    if height > size or width > size:
        raise UsageError(f"cannot pad {height}x{width} to {size}x{size}: resize it first")
    out = np.zeros((channels, size, size), dtype=x.dtype)
    out[:, :height, :width] = x
    return out


def preprocess(image: np.ndarray, image_size: int) -> np.ndarray:
    """H x W x 3 uint8 RGB photo -> the encoder's input, (1, 3, image_size, image_size) float32."""
    resized = resize_longest_side(image, image_size)
    return pad_to_square(normalize(resized), image_size)[None]


def points_to_frame(
    points: np.ndarray, original_size: tuple[int, int], frame: int = PROMPT_FRAME
) -> np.ndarray:
    """(..., 2) x, y pixels of the photo -> the same points in the ``frame`` (1024) frame.

    Each axis scales by its own rounded size ratio (``new_w / old_w``, ``new_h / old_h``),
    computed in float64 like the official predictor, then rounded once to float32.
    """
    old_h, old_w = original_size
    new_h, new_w = resized_shape(old_h, old_w, frame)
    coords = np.array(points, dtype=np.float64)
    coords[..., 0] = coords[..., 0] * (new_w / old_w)
    coords[..., 1] = coords[..., 1] * (new_h / old_h)
    return coords.astype(np.float32)


def boxes_to_frame(
    boxes: np.ndarray, original_size: tuple[int, int], frame: int = PROMPT_FRAME
) -> np.ndarray:
    """(..., 4) x0, y0, x1, y1 boxes of the photo -> the ``frame`` (1024) frame."""
    boxes = np.asarray(boxes, dtype=np.float64)
    return points_to_frame(boxes.reshape(*boxes.shape[:-1], 2, 2), original_size, frame).reshape(boxes.shape)


def _linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of torch's bilinear (``align_corners=False``) along one axis.

    ``src = max(scale * (i + 0.5) - 0.5, 0)`` with ``scale = in / out`` in float32; torch's
    compiled kernel fuses the multiply-add (one rounding), reproduced here by computing it in
    float64 and rounding once. Left index ``floor(src)``, right index clamped to the edge.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    src = (np.float64(scale) * (np.arange(out_size, dtype=np.float64) + 0.5) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0))
    left = src.astype(np.int64)
    right = np.minimum(left + 1, in_size - 1)
    w_right = np.clip(src - left.astype(np.float32), np.float32(0), np.float32(1))
    return left, right, np.float32(1) - w_right, w_right


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(..., h, w) float32 -> (..., H, W), as ``F.interpolate(x, size, mode="bilinear",
    align_corners=False)`` (no antialiasing).

    The same taps and weights as torch; each row is blended along its width, then the rows are
    blended. The sums may differ from torch's vectorised kernel in the last bit or two.
    """
    x = np.asarray(x, dtype=np.float32)
    top, bottom, w_top, w_bottom = _linear_taps(x.shape[-2], size[0])
    left, right, w_left, w_right = _linear_taps(x.shape[-1], size[1])
    rows = x[..., left] * w_left + x[..., right] * w_right
    return rows[..., top, :] * w_top[:, None] + rows[..., bottom, :] * w_bottom[:, None]


def postprocess_masks(
    low_res_logits: np.ndarray, original_size: tuple[int, int], frame: int = PROMPT_FRAME
) -> np.ndarray:
    """(..., 256, 256) decoder logits -> (..., H, W) logits on the photo; threshold them at 0.

    Upscale to the ``frame`` (the 1024 frame of the prompts, not the encoder input size),
    keep the part covered by the resized photo, then resize that to the photo's own size.
    """
    height, width = resized_shape(*original_size, frame)
    upscaled = resize_bilinear(low_res_logits, (frame, frame))
    return resize_bilinear(upscaled[..., :height, :width], original_size)


def select_masks(
    masks: np.ndarray, iou_predictions: np.ndarray, multimask: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The official predictor's choice among the decoder's four mask tokens: tokens 1..3 (three
    candidates, for an ambiguous prompt such as one click) or token 0 (one answer).

    ``masks`` (B, 4, ...) and ``iou_predictions`` (B, 4) -> (B, 3 or 1, ...), (B, 3 or 1).
    """
    chosen = slice(1, None) if multimask else slice(0, 1)
    return masks[:, chosen], iou_predictions[:, chosen]
