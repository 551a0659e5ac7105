"""EfficientViT backbones: B-series (mobile, hardswish) and L-series (GPU-friendly, GELU).

Both return a dict of features keyed ``input``, ``stage0`` .. ``stageN`` (stride 2**k) and
``stage_final``, so heads pick their inputs by name.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .attention import EfficientViTBlock
from .blocks import OpSequential, build_local_block, residual
from .layers import ConvLayer

__all__ = [
    "EfficientViTBackbone",
    "EfficientViTLargeBackbone",
    "efficientvit_backbone_b0",
    "efficientvit_backbone_b1",
    "efficientvit_backbone_b2",
    "efficientvit_backbone_b3",
    "efficientvit_backbone_l0",
    "efficientvit_backbone_l1",
    "efficientvit_backbone_l2",
    "efficientvit_backbone_l3",
    "efficientvit_backbone_xl0",
    "efficientvit_backbone_xl1",
]

Features = dict[str, torch.Tensor]


class EfficientViTBackbone(nn.Module):
    """B-series: conv stem + DSConv, two MBConv stages, two attention stages.

    Attention only runs at strides 16 and 32, where the token count is small enough for the
    linear attention to be cheap; the downsampling MBConv in front of each attention stage is
    fewer-norm.
    """

    def __init__(
        self,
        width_list: Sequence[int],
        depth_list: Sequence[int],
        in_channels: int = 3,
        dim: int = 32,
        expand_ratio: float = 4,
        norm: str = "bn2d",
        act_func: str = "hswish",
    ) -> None:
        super().__init__()
        self.width_list = list(width_list)

        stem: list[nn.Module] = [
            ConvLayer(in_channels, width_list[0], 3, stride=2, norm=norm, act_func=act_func)
        ]
        for _ in range(depth_list[0]):
            block = build_local_block("ds", width_list[0], width_list[0], 1, 1, norm, act_func)
            stem.append(residual(block, 1, width_list[0], width_list[0]))
        self.input_stem = OpSequential(stem)

        stages: list[OpSequential] = []
        in_ch = width_list[0]
        for w, d in zip(width_list[1:3], depth_list[1:3]):
            ops: list[nn.Module] = []
            for i in range(d):
                stride = 2 if i == 0 else 1
                block = build_local_block("mb", in_ch, w, stride, expand_ratio, norm, act_func)
                ops.append(residual(block, stride, in_ch, w))
                in_ch = w
            stages.append(OpSequential(ops))
        for w, d in zip(width_list[3:], depth_list[3:]):
            down = build_local_block("mb", in_ch, w, 2, expand_ratio, norm, act_func, fewer_norm=True)
            ops = [residual(down, 2, in_ch, w)]
            in_ch = w
            ops += [
                EfficientViTBlock(w, dim=dim, expand_ratio=expand_ratio, norm=norm, act_func=act_func)
                for _ in range(d)
            ]
            stages.append(OpSequential(ops))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> Features:
        features: Features = {"input": x}
        features["stage0"] = x = self.input_stem(x)
        for stage_id, stage in enumerate(self.stages, start=1):
            features[f"stage{stage_id}"] = x = stage(x)
        features["stage_final"] = x
        return features


class EfficientViTLargeBackbone(nn.Module):
    """L-series (and SAM-XL): ResBlock stem, FusedMBConv early, MBConv, attention last.

    Fused convs are faster than depthwise ones on GPUs at high resolution. Every downsampling
    block (first of stages 1..N) is an MBConv or FusedMBConv with 4x the stage's expand ratio;
    attention stages downsample with an MBConv.
    """

    def __init__(
        self,
        width_list: Sequence[int],
        depth_list: Sequence[int],
        block_list: Sequence[str] | None = None,
        expand_list: Sequence[float] | None = None,
        fewer_norm_list: Sequence[bool] | None = None,
        in_channels: int = 3,
        qkv_dim: int = 32,
        norm: str = "bn2d",
        act_func: str = "gelu",
    ) -> None:
        super().__init__()
        block_list = list(block_list or ["res", "fmb", "fmb", "mb", "att"])
        expand_list = list(expand_list or [1, 4, 4, 4, 6])
        fewer_norm_list = list(fewer_norm_list or [False, False, False, True, True])
        self.width_list = list(width_list)

        w0 = width_list[0]
        stem: list[nn.Module] = [ConvLayer(in_channels, w0, 3, stride=2, norm=norm, act_func=act_func)]
        for _ in range(depth_list[0]):
            block = build_local_block(
                block_list[0], w0, w0, 1, expand_list[0], norm, act_func, fewer_norm_list[0]
            )
            stem.append(residual(block, 1, w0, w0))
        stages: list[OpSequential] = [OpSequential(stem)]

        in_ch = w0
        for i, (w, d) in enumerate(zip(width_list[1:], depth_list[1:]), start=1):
            kind = block_list[i]
            down_kind = kind if kind in ("mb", "fmb") else "mb"
            down = build_local_block(
                down_kind, in_ch, w, 2, expand_list[i] * 4, norm, act_func, fewer_norm_list[i]
            )
            ops: list[nn.Module] = [residual(down, 2, in_ch, w)]
            in_ch = w
            for _ in range(d):
                if kind.startswith("att"):
                    scales = (3,) if kind == "att@3" else (5,)
                    ops.append(
                        EfficientViTBlock(
                            w,
                            dim=qkv_dim,
                            expand_ratio=expand_list[i],
                            scales=scales,
                            norm=norm,
                            act_func=act_func,
                        )
                    )
                else:
                    block = build_local_block(
                        kind, w, w, 1, expand_list[i], norm, act_func, fewer_norm_list[i]
                    )
                    ops.append(residual(block, 1, w, w))
            stages.append(OpSequential(ops))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> Features:
        features: Features = {"input": x}
        for stage_id, stage in enumerate(self.stages):
            features[f"stage{stage_id}"] = x = stage(x)
        features["stage_final"] = x
        return features


def efficientvit_backbone_b0(in_channels: int = 3) -> EfficientViTBackbone:
    return EfficientViTBackbone([8, 16, 32, 64, 128], [1, 2, 2, 2, 2], in_channels=in_channels, dim=16)


def efficientvit_backbone_b1(in_channels: int = 3) -> EfficientViTBackbone:
    return EfficientViTBackbone([16, 32, 64, 128, 256], [1, 2, 3, 3, 4], in_channels=in_channels, dim=16)


def efficientvit_backbone_b2(in_channels: int = 3) -> EfficientViTBackbone:
    return EfficientViTBackbone([24, 48, 96, 192, 384], [1, 3, 4, 4, 6], in_channels=in_channels, dim=32)


def efficientvit_backbone_b3(in_channels: int = 3) -> EfficientViTBackbone:
    return EfficientViTBackbone([32, 64, 128, 256, 512], [1, 4, 6, 6, 9], in_channels=in_channels, dim=32)


def efficientvit_backbone_l0(in_channels: int = 3) -> EfficientViTLargeBackbone:
    """Only EfficientViT-SAM-L0 uses it: there is no L0 classifier or segmenter."""
    return EfficientViTLargeBackbone([32, 64, 128, 256, 512], [1, 1, 1, 4, 4], in_channels=in_channels)


def efficientvit_backbone_l1(in_channels: int = 3) -> EfficientViTLargeBackbone:
    return EfficientViTLargeBackbone([32, 64, 128, 256, 512], [1, 1, 1, 6, 6], in_channels=in_channels)


def efficientvit_backbone_l2(in_channels: int = 3) -> EfficientViTLargeBackbone:
    return EfficientViTLargeBackbone([32, 64, 128, 256, 512], [1, 2, 2, 8, 8], in_channels=in_channels)


def efficientvit_backbone_l3(in_channels: int = 3) -> EfficientViTLargeBackbone:
    return EfficientViTLargeBackbone([64, 128, 256, 512, 1024], [1, 2, 2, 8, 8], in_channels=in_channels)


def _sam_xl_backbone(depth_list: Sequence[int], in_channels: int) -> EfficientViTLargeBackbone:
    """Six stages (strides 2..64): a FusedMBConv stage 3, then two attention stages with 3x3
    multi-scale aggregation, so the 1024x1024 input reaches stride 64 before global attention."""
    return EfficientViTLargeBackbone(
        [32, 64, 128, 256, 512, 1024],
        depth_list,
        block_list=["res", "fmb", "fmb", "fmb", "att@3", "att@3"],
        expand_list=[1, 4, 4, 4, 4, 6],
        fewer_norm_list=[False, False, False, False, True, True],
        in_channels=in_channels,
    )


def efficientvit_backbone_xl0(in_channels: int = 3) -> EfficientViTLargeBackbone:
    """EfficientViT-SAM-XL0's backbone (built inline by the official ``efficientvit_sam_xl0``).

    Stage 0 has depth 0: it is only the stem conv.
    """
    return _sam_xl_backbone([0, 1, 1, 2, 3, 3], in_channels)


def efficientvit_backbone_xl1(in_channels: int = 3) -> EfficientViTLargeBackbone:
    """EfficientViT-SAM-XL1's backbone (built inline by the official ``efficientvit_sam_xl1``)."""
    return _sam_xl_backbone([1, 2, 2, 4, 6, 6], in_channels)
