"""ImageNet classification: backbone features -> ClsHead -> logits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .backbone import EfficientViTBackbone, EfficientViTLargeBackbone
from .blocks import OpSequential
from .layers import ConvLayer, LinearLayer

__all__ = ["ClsHead", "EfficientViTCls"]


class ClsHead(OpSequential):
    """1x1 conv widening -> global average pool -> Linear+LayerNorm+act -> classifier.

    Widening *before* the pool is cheap (the map is 7x7 at 224) and gives the pooled vector far
    more channels than the backbone's last stage. The pool sits at ``op_list.1`` and has no keys,
    which is why the official keys skip index 1.
    """

    def __init__(
        self,
        in_channels: int,
        width_list: Sequence[int],
        n_classes: int = 1000,
        dropout: float = 0.0,
        norm: str = "bn2d",
        act_func: str = "hswish",
        fid: str = "stage_final",
    ) -> None:
        super().__init__(
            [
                ConvLayer(in_channels, width_list[0], 1, norm=norm, act_func=act_func),
                nn.AdaptiveAvgPool2d(output_size=1),
                LinearLayer(width_list[0], width_list[1], use_bias=False, norm="ln", act_func=act_func),
                LinearLayer(
                    width_list[1], n_classes, use_bias=True, dropout=dropout, norm=None, act_func=None
                ),
            ]
        )
        self.fid = fid

    def forward(self, feature_dict: dict[str, torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        return super().forward(feature_dict[self.fid])


class EfficientViTCls(nn.Module):
    """Image (B, 3, H, W) -> logits (B, n_classes); any H, W (the head pools globally)."""

    def __init__(self, backbone: EfficientViTBackbone | EfficientViTLargeBackbone, head: ClsHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))
