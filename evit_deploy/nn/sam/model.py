"""EfficientViT-SAM: the EfficientViT image encoder in front of SAM's prompt encoder and mask
decoder (arXiv 2402.05008). Keys: ``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...sam.transforms import PROMPT_FRAME
from .decode import decode_prompts
from .encoder import EMBED_DIM, EMBEDDING_SIZE, EfficientViTSamImageEncoder
from .graphs import SAM_GRAPHS
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .transformer import TwoWayTransformer

__all__ = ["EfficientViTSam"]


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

    def graph(self, name: str, **options: Any) -> nn.Module:
        """The export graph ``name`` (``encoder`` or ``decoder``, as the model cards list them); ``options``
        are the decoder's (``single_mask``, ``mask_input``)."""
        if name not in SAM_GRAPHS:
            raise KeyError(f"EfficientViT-SAM has no graph {name!r}; its graphs: {', '.join(SAM_GRAPHS)}")
        return SAM_GRAPHS[name](self, **options)

    def forward(
        self, images: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocessed images (1 or B, 3, S, S) and prompts -> ``decode``'s masks and scores."""
        return self.decode(self.image_encoder(images), point_coords, point_labels)
