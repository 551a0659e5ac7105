"""The prompt half of SAM as one function: prompts -> sparse and dense prompt embeddings -> masks.

Shared by the full model (``EfficientViTSam.decode``) and the decoder export graph, so the two
cannot drift apart.
"""

from __future__ import annotations

import torch

from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder

__all__ = ["decode_prompts"]


def decode_prompts(
    prompt_encoder: PromptEncoder,
    mask_decoder: MaskDecoder,
    image_embeddings: torch.Tensor,
    point_coords: torch.Tensor,
    point_labels: torch.Tensor,
    mask_input: torch.Tensor | None = None,
    has_mask_input: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts -> all four mask logits (B, 4, 256, 256) and IoU predictions (B, 4).

    ``point_coords`` (B, N, 2) are pixels in the 1024 frame, ``point_labels`` (B, N) as in
    ``evit_deploy.sam.POINT_LABELS``; ``image_embeddings`` is (1 or B, 256, 64, 64);
    ``mask_input`` (B, 1, 256, 256) with ``has_mask_input`` (B,) as in ``PromptEncoder.embed_mask``.
    """
    sparse = prompt_encoder.embed_points(point_coords, point_labels)
    dense = prompt_encoder.embed_mask(mask_input, has_mask_input)
    return mask_decoder(image_embeddings, prompt_encoder.dense_pe(), sparse, dense)
