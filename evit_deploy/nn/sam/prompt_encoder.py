"""SAM's prompt encoder (Kirillov et al., arXiv 2304.02643, section 3): points and box corners
become sparse tokens, a low-resolution mask becomes a dense map added to the image embedding.

Module and parameter names are those of Meta's ``segment_anything`` (the official EfficientViT-SAM
checkpoints hold them under ``prompt_encoder.*``). The point embedding is written for export: the
label of each point selects its learned embedding through arithmetic masks (``labels == k``), so
the graph has no boolean indexing, no data-dependent shapes and no OneHot.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..layers import LayerNorm2d

__all__ = ["PromptEncoder", "RandomFourierEncoding"]


class RandomFourierEncoding(nn.Module):
    """Positions in [0, 1]^2 -> ``[sin(2 pi p G), cos(2 pi p G)]`` for a fixed Gaussian matrix G.

    Random Fourier features (Tancik et al. 2020) give the decoder a smooth, high-frequency code
    for where a point is; the same code is evaluated on the embedding grid for the image side.
    G is a buffer stored in checkpoints (``positional_encoding_gaussian_matrix``).
    """

    positional_encoding_gaussian_matrix: torch.Tensor

    def __init__(self, num_pos_feats: int = 128) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn((2, num_pos_feats)))

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """(..., 2) positions in [0, 1] (x, y) -> (..., 2 * num_pos_feats)."""
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)


class PromptEncoder(nn.Module):
    """Sparse tokens for points/boxes, a dense map for an optional mask, and the grid encoding.

    Coordinates are pixels in the frame the decoder was trained in (``input_image_size``,
    1024x1024 for every EfficientViT-SAM model, even the 512-input L models); ``+ 0.5`` moves
    a pixel index to the pixel's centre.
    """

    grid: torch.Tensor

    def __init__(
        self,
        embed_dim: int = 256,
        image_embedding_size: tuple[int, int] = (64, 64),
        input_image_size: tuple[int, int] = (1024, 1024),
        mask_in_chans: int = 16,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = RandomFourierEncoding(embed_dim // 2)
        # labels 0..3: negative point, positive point, box top-left, box bottom-right
        self.point_embeddings = nn.ModuleList([nn.Embedding(1, embed_dim) for _ in range(4)])
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4, eps=1e-6),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans, eps=1e-6),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        # Centres of the embedding grid's cells in [0, 1], (h, w, 2) as (x, y). A constant, so the
        # exported decoder has no range/cumsum ops; not a checkpoint key.
        h, w = image_embedding_size
        ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
        grid = torch.stack([xs.expand(h, w), ys[:, None].expand(h, w)], dim=-1)
        self.register_buffer("grid", grid, persistent=False)

    def dense_pe(self) -> torch.Tensor:
        """The positional code of every embedding cell: (1, embed_dim, h, w)."""
        return self.pe_layer(self.grid).permute(2, 0, 1).unsqueeze(0)

    def embed_points(self, point_coords: torch.Tensor, point_labels: torch.Tensor) -> torch.Tensor:
        """(B, N, 2) pixel coordinates and (B, N) labels -> tokens (B, N, embed_dim).

        Labels as in ``evit_deploy.sam.POINT_LABELS``. A point's token is its positional code plus
        the embedding of its label; a padding point (label -1) carries only ``not_a_point_embed``.
        Labels outside -1..3 get the bare code.
        """
        frame = point_coords.new_tensor([self.input_image_size[1], self.input_image_size[0]])
        code = self.pe_layer((point_coords + 0.5) / frame)
        labels = point_labels.unsqueeze(-1)
        is_padding = (labels == -1).to(code.dtype)
        tokens = code * (labels != -1).to(code.dtype) + self.not_a_point_embed.weight * is_padding
        for label, embedding in enumerate(self.point_embeddings):
            tokens = tokens + embedding.weight * (labels == label).to(code.dtype)
        return tokens

    def embed_mask(
        self, mask_input: torch.Tensor | None, has_mask_input: torch.Tensor | None
    ) -> torch.Tensor:
        """The dense prompt: (B, embed_dim, h, w) from a (B, 1, 4h, 4w) mask, else (1, embed_dim, 1, 1).

        ``has_mask_input`` (B,) is 1 where a row's mask is real and 0 where it is a placeholder, as
        in Meta's ONNX decoder: one graph then serves the first click and the refinements.
        Without a mask the learned ``no_mask_embed`` broadcasts over the grid.
        """
        no_mask = self.no_mask_embed.weight.reshape(1, -1, 1, 1)
        if mask_input is None:
            return no_mask
        if has_mask_input is None:
            return self.mask_downscaling(mask_input)
        has_mask = has_mask_input.reshape(-1, 1, 1, 1)
        return has_mask * self.mask_downscaling(mask_input) + (1 - has_mask) * no_mask
