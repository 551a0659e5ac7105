"""Semantic segmentation: a light FPN-style head on the backbone's stride 8/16/32 features."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from .backbone import EfficientViTBackbone, EfficientViTLargeBackbone
from .blocks import DAGBlock, FusedMBConv, MBConv, OpSequential, ResidualBlock
from .layers import ConvLayer, IdentityLayer, UpSampleLayer

__all__ = ["EfficientViTSeg", "SegHead"]


class SegHead(DAGBlock):
    """Project each scale to ``head_width``, upsample to ``head_stride`` (bicubic), add, refine.

    The input projections have BN but no activation, so the sum is a plain linear fusion; the
    refinement trunk is a stack of residual (Fused)MBConvs; the output is logits at
    ``head_stride`` (8): the model never resizes to the input size itself.
    """

    def __init__(
        self,
        fid_list: Sequence[str],
        in_channel_list: Sequence[int],
        stride_list: Sequence[int],
        head_stride: int,
        head_width: int,
        head_depth: int,
        expand_ratio: float,
        middle_op: Literal["mbconv", "fmbconv"],
        final_expand: int | None,
        n_classes: int,
        dropout: float = 0.0,
        norm: str = "bn2d",
        act_func: str = "hswish",
    ) -> None:
        inputs: dict[str, nn.Module] = {}
        for fid, in_channels, stride in zip(fid_list, in_channel_list, stride_list):
            factor = stride // head_stride
            project = ConvLayer(in_channels, head_width, 1, norm=norm, act_func=None)
            inputs[fid] = project if factor == 1 else OpSequential([project, UpSampleLayer(factor=factor)])

        middle: list[nn.Module] = []
        for _ in range(head_depth):
            block: nn.Module
            if middle_op == "mbconv":
                block = MBConv(
                    head_width,
                    head_width,
                    expand_ratio=expand_ratio,
                    norm=norm,
                    act_func=(act_func, act_func, None),
                )
            elif middle_op == "fmbconv":
                block = FusedMBConv(
                    head_width, head_width, expand_ratio=expand_ratio, norm=norm, act_func=(act_func, None)
                )
            else:
                raise ValueError(f"unknown middle_op {middle_op!r}")
            middle.append(ResidualBlock(block, IdentityLayer()))

        expand = (
            None
            if final_expand is None
            else ConvLayer(head_width, head_width * final_expand, 1, norm=norm, act_func=act_func)
        )
        classifier = ConvLayer(
            head_width * (final_expand or 1),
            n_classes,
            1,
            use_bias=True,
            dropout=dropout,
            norm=None,
            act_func=None,
        )
        super().__init__(
            inputs,
            merge="add",
            post_input=None,
            middle=OpSequential(middle),
            outputs={"segout": OpSequential([expand, classifier])},
        )


class EfficientViTSeg(nn.Module):
    """Image (B, 3, H, W) -> logits (B, n_classes, ceil(H/8), ceil(W/8)).

    H and W should be multiples of 32 so the upsampled stride-32/16 maps line up with the
    stride-8 map. Output is fp32 for fp32 input; under half precision the upsampled branches are
    fp32 (as in the official code), so run it under autocast rather than ``model.half()``.
    """

    def __init__(self, backbone: EfficientViTBackbone | EfficientViTLargeBackbone, head: SegHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.head(self.backbone(x))
        return features["segout"]
