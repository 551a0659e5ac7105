"""The prompts verify feeds a SAM decoder: per image a grid of single clicks plus seeded boxes
(``evit_deploy.sam.generated_prompts``), or the user's prompt file, in the 1024 frame the way the
official predictor converts them, cut to the artifact's fixed sizes."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from evit_deploy.sam import (
    LOW_RES,
    PROMPT_FRAME,
    decoder_batches,
    decoder_inputs,
    generated_prompts,
    read_prompt_file,
)

if TYPE_CHECKING:
    from evit_deploy.pipeline.feeds import PromptContext
    from evit_deploy.zoo.cards import GraphCard, ModelCard

MASK_LOGIT = 8.0  # magnitude of the logits of a synthetic previous mask


def sam_prompts(card: ModelCard, graph: GraphCard, context: PromptContext) -> list[dict[str, np.ndarray]]:
    """``point_coords`` and ``point_labels`` (and, for a ``mask_input`` decoder, a previous mask per
    prompt, every other row marked as absent) for one image, as the artifact's runs."""
    if context.prompts is not None:
        prompts = read_prompt_file(context.prompts, context.image_size)
    else:
        prompts = generated_prompts(context.image_size, seed=(context.seed, context.index))
    frame = card.prompt_frame or PROMPT_FRAME
    coords, labels = decoder_inputs(prompts, context.image_size, frame)
    arrays = {"point_coords": coords, "point_labels": labels}
    if any(t.name == "mask_input" for t in graph.inputs_for(context.options)):
        arrays["mask_input"] = previous_masks(coords, labels, frame)
        arrays["has_mask_input"] = (np.arange(len(labels)) % 2 == 0).astype(np.float32)
    fixed = context.artifact_inputs.get("point_coords")
    prompts_dim, points_dim = fixed.shape[:2] if fixed is not None else (None, None)
    return decoder_batches(arrays, prompts_dim, points_dim)


def previous_masks(coords: np.ndarray, labels: np.ndarray, frame: int = PROMPT_FRAME) -> np.ndarray:
    """(B, 1, 256, 256) logits standing in for a previous click's low-res mask: positive inside the
    box around each prompt's positive points and box corners (grown by 1/16 of the frame), negative
    elsewhere. Enough to exercise the mask branch the way a refinement click does."""
    scale = LOW_RES / frame
    grid = np.arange(LOW_RES, dtype=np.float32) + 0.5
    masks = np.full((len(labels), 1, LOW_RES, LOW_RES), -MASK_LOGIT, dtype=np.float32)
    margin = LOW_RES / 16
    for row, (points, kinds) in enumerate(zip(coords, labels)):
        used = points[kinds > 0] * scale
        if not len(used):
            continue
        (x0, y0), (x1, y1) = used.min(axis=0) - margin, used.max(axis=0) + margin
        inside = ((grid[:, None] >= y0) & (grid[:, None] <= y1)) & ((grid[None, :] >= x0) & (grid[None, :] <= x1))
        masks[row, 0][inside] = MASK_LOGIT
    return masks
