"""EfficientViT-SAM: the EfficientViT image encoder in front of SAM's prompt encoder and mask
decoder (arXiv 2402.05008). Keys: ``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``.
"""

from __future__ import annotations

import torch
from torch import nn

from ...sam.transforms import PROMPT_FRAME
from .encoder import EMBED_DIM, EMBEDDING_SIZE, EfficientViTSamImageEncoder
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .transformer import TwoWayTransformer

__all__ = ["EfficientViTSam", "decode_prompts"]


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


class EfficientViTSam(nn.Module):
    """Image encoder + prompt encoder + mask decoder.

    The two halves run at different rates in an application (one encoder pass per image, one
    decoder pass per click), so they are exported as two graphs (``graphs.py``);
    ``forward`` chains them for a one-call PyTorch reference.
    """

    mask_threshold: float = 0.0

    def __init__(self, image_encoder: EfficientViTSamImageEncoder, image_size: int) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = PromptEncoder(
            embed_dim=EMBED_DIM,
            image_embedding_size=(EMBEDDING_SIZE, EMBEDDING_SIZE),
            input_image_size=(PROMPT_FRAME, PROMPT_FRAME),
            mask_in_chans=16,
        )
        self.mask_decoder = MaskDecoder(
            TwoWayTransformer(depth=2, embedding_dim=EMBED_DIM, num_heads=8, mlp_dim=2048),
            transformer_dim=EMBED_DIM,
            num_multimask_outputs=3,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        )
        self.image_size = image_size  # encoder input side: 512 (L) or 1024 (XL)

    def decode(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor | None = None,
        has_mask_input: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``decode_prompts`` with this model's prompt encoder and mask decoder."""
        return decode_prompts(
            self.prompt_encoder,
            self.mask_decoder,
            image_embeddings,
            point_coords,
            point_labels,
            mask_input,
            has_mask_input,
        )

    def forward(
        self, images: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocessed images (1 or B, 3, S, S) and prompts -> ``decode``'s masks and scores."""
        return self.decode(self.image_encoder(images), point_coords, point_labels)
