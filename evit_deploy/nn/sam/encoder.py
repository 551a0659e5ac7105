"""EfficientViT-SAM's image encoder: an EfficientViT backbone, a neck that fuses three scales at
64x64, and a channel LayerNorm (arXiv 2402.05008; layout of the official ``sam.py``).

The encoder replaces SAM's ViT-H: whatever the input size (512 for L, 1024 for XL), it emits the
(B, 256, 64, 64) embedding that SAM's prompt encoder and mask decoder expect.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from ..backbone import EfficientViTBackbone, EfficientViTLargeBackbone
from ..blocks import DAGBlock, FusedMBConv, MBConv, OpSequential, ResBlock, ResidualBlock
from ..layers import ConvLayer, IdentityLayer, LayerNorm2d, UpSampleLayer

__all__ = ["EMBEDDING_SIZE", "EfficientViTSamImageEncoder", "SamNeck"]

EMBEDDING_SIZE = 64
"""Side of SAM's image embedding grid, for every input size."""

EMBED_DIM = 256


class SamNeck(DAGBlock):
    """Project each backbone scale to ``head_width``, resize it (bicubic) to 64x64, add, refine.

    Every input is resized, even one already at 64x64: the official neck does, and the
    same-size bicubic resize returns its input unchanged, so this only keeps the graphs alike.
    The refinement trunk is ``head_depth`` residual blocks; a 1x1 conv with bias maps to 256.
    """

    def __init__(
        self,
        fid_list: Sequence[str],
        in_channel_list: Sequence[int],
        head_width: int,
        head_depth: int,
        expand_ratio: float,
        middle_op: Literal["mb", "fmb", "res"],
        out_dim: int = EMBED_DIM,
        norm: str = "bn2d",
        act_func: str = "gelu",
    ) -> None:
        inputs: dict[str, nn.Module] = {
            fid: OpSequential(
                [
                    ConvLayer(in_channels, head_width, 1, norm=norm, act_func=None),
                    UpSampleLayer(size=(EMBEDDING_SIZE, EMBEDDING_SIZE)),
                ]
            )
            for fid, in_channels in zip(fid_list, in_channel_list)
        }
        middle = [
            ResidualBlock(
                self._middle_block(middle_op, head_width, expand_ratio, norm, act_func), IdentityLayer()
            )
            for _ in range(head_depth)
        ]
        output = ConvLayer(head_width, out_dim, 1, use_bias=True, norm=None, act_func=None)
        super().__init__(
            inputs,
            merge="add",
            post_input=None,
            middle=OpSequential(middle),
            outputs={"sam_encoder": OpSequential([output])},
        )

    @staticmethod
    def _middle_block(kind: str, width: int, expand_ratio: float, norm: str, act_func: str) -> nn.Module:
        """Full-norm blocks (BN after every conv, no bias); every released model uses ``fmb``."""
        if kind == "mb":
            return MBConv(
                width, width, expand_ratio=expand_ratio, norm=norm, act_func=(act_func, act_func, None)
            )
        if kind == "fmb":
            return FusedMBConv(width, width, expand_ratio=expand_ratio, norm=norm, act_func=(act_func, None))
        if kind == "res":
            return ResBlock(width, width, expand_ratio=expand_ratio, norm=norm, act_func=(act_func, None))
        raise ValueError(f"unknown SAM neck middle_op {kind!r}")


class EfficientViTSamImageEncoder(nn.Module):
    """Image (B, 3, S, S), normalised and zero-padded -> image embeddings (B, 256, 64, 64).

    The final LayerNorm2d is where an all-fp16 encoder overflows (official issue #142): its
    input carries the neck's large activations, so deployments keep it in fp32.
    """

    def __init__(self, backbone: EfficientViTBackbone | EfficientViTLargeBackbone, neck: SamNeck) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.norm = LayerNorm2d(EMBED_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.neck(self.backbone(x))
        return self.norm(features["sam_encoder"])
