"""A picture of one SAM answer for people: the photo with the mask tinted and outlined, the points
(positive green, negative red) and the box drawn on top, so two engines' masks compare by eye."""

from __future__ import annotations

import numpy as np

from .prompts import Prompt

__all__ = ["draw_overlay"]

MASK_COLOUR = np.array([30, 144, 255], dtype=np.float32)  # a blue that reads on most photos
POSITIVE, NEGATIVE, BOX = (0, 220, 0), (235, 20, 20), (255, 215, 0)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def draw_overlay(image: np.ndarray, mask: np.ndarray, prompt: Prompt, alpha: float = 0.5) -> np.ndarray:
    """H x W x 3 uint8 photo and H x W bool mask -> H x W x 3 uint8 picture of both and the prompt."""
    from PIL import Image, ImageDraw

    picture = image.astype(np.float32)
    picture[mask] = (1 - alpha) * picture[mask] + alpha * MASK_COLOUR
    picture[_outline(mask)] = MASK_COLOUR
    canvas = Image.fromarray(np.clip(picture + 0.5, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    radius = max(3, round(min(image.shape[:2]) / 80))
    width = max(1, radius // 3)
    if prompt.box is not None:
        draw.rectangle(prompt.box, outline=BOX, width=width)
    for (x, y), label in zip(prompt.points, prompt.labels):
        colour = POSITIVE if label == 1 else NEGATIVE if label == 0 else BOX
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour, outline=(255, 255, 255),
                     width=width)
    return np.asarray(canvas)
