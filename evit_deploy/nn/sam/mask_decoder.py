"""SAM's mask decoder (arXiv 2304.02643, section 3): output tokens read the image through the
two-way transformer; each mask token becomes, through a small MLP, the weights of a linear
classifier over the upscaled image embedding, and an IoU token scores every mask.

Four mask tokens: token 0 is the single-mask answer for unambiguous prompts, tokens 1..3 the
three candidates SAM gives for an ambiguous one (a single click). Names follow Meta's
``segment_anything.modeling.mask_decoder`` (checkpoint keys ``mask_decoder.*``).

Export: the official decoder copies the image embedding once per prompt with
``torch.repeat_interleave``, which TensorRT cannot parse into shape tensors (official issues
#70, #78). Here the embedding is broadcast (``expand``) to the prompt batch instead: the same
values, no data-dependent repeat.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import LayerNorm2d
from .transformer import TwoWayTransformer

__all__ = ["MLP", "MaskDecoder"]


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them (none after the last)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(
            nn.Linear(d_in, d_out) for d_in, d_out in zip(dims, dims[1:] + [output_dim])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


class MaskDecoder(nn.Module):
    """Image embedding + prompt tokens -> all mask logits (B, 4, 4h, 4w) and IoU scores (B, 4)."""

    def __init__(
        self,
        transformer: TwoWayTransformer,
        transformer_dim: int = 256,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        # two stride-2 transposed convs: 64x64 -> 256x256, 256 -> 32 channels
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4, eps=1e-6),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            [
                MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
                for _ in range(self.num_mask_tokens)
            ]
        )
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth
        )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every mask token's logits and score; choosing among them is the caller's business.

        ``image_embeddings`` is (1 or B, C, h, w): one image shared by all B prompts, or one
        per prompt. ``dense_prompt_embeddings`` is (1 or B, C, h or 1, w or 1).
        """
        batch = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat(
            [output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse_prompt_embeddings], dim=1
        )

        src = (image_embeddings + dense_prompt_embeddings).expand(batch, -1, -1, -1)
        _, c, h, w = src.shape
        hs, keys = self.transformer(src, image_pe, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        upscaled = self.output_upscaling(keys.transpose(1, 2).reshape(batch, c, h, w))
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )  # (B, 4, C/8): one linear classifier per mask token
        _, c_up, h_up, w_up = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(batch, c_up, h_up * w_up)).reshape(batch, -1, h_up, w_up)
        return masks, self.iou_prediction_head(iou_token_out)
