"""EfficientViT-SAM's pre- and postprocessing and prompts, in numpy (no PyTorch).

Runner code (``evit segment``, verify on a device) uses these with exported encoder and
decoder graphs; the PyTorch model lives in ``evit_deploy.nn.sam``.
"""

from __future__ import annotations

from .prompts import (
    POINT_LABELS,
    Prompt,
    decoder_batches,
    decoder_inputs,
    generated_prompts,
    parse_prompts,
    prompt_batches,
    read_prompt_file,
)
from .transforms import (
    LOW_RES,
    MEAN,
    PROMPT_FRAME,
    STD,
    boxes_to_frame,
    normalize,
    pad_to_square,
    points_to_frame,
    postprocess_masks,
    preprocess,
    read_image,
    resize_bilinear,
    resize_longest_side,
    resized_shape,
    select_masks,
)

__all__ = [
    "LOW_RES",
    "MEAN",
    "POINT_LABELS",
    "PROMPT_FRAME",
    "STD",
    "Prompt",
    "boxes_to_frame",
    "decoder_batches",
    "decoder_inputs",
    "generated_prompts",
    "normalize",
    "pad_to_square",
    "parse_prompts",
    "points_to_frame",
    "postprocess_masks",
    "preprocess",
    "prompt_batches",
    "read_image",
    "read_prompt_file",
    "resize_bilinear",
    "resize_longest_side",
    "resized_shape",
    "select_masks",
]
