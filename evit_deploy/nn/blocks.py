"""Conv blocks (DSConv, MBConv, FusedMBConv, ResBlock) and the structural glue around them.

None of the conv blocks has a skip connection: residuals come only from ``ResidualBlock``, and
the builders decide at construction time which blocks get one (stride 1, same width).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import torch
from torch import nn

from .layers import ConvLayer, IdentityLayer, per_conv

__all__ = [
    "DAGBlock",
    "DSConv",
    "FusedMBConv",
    "LocalBlockKind",
    "MBConv",
    "OpSequential",
    "ResBlock",
    "ResidualBlock",
    "build_local_block",
    "residual",
]

Norm = str | None
Act = str | None


class DSConv(nn.Module):
    """Depthwise 3x3 (carries the stride) then pointwise 1x1: the cheapest spatial mixer."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        use_bias: bool | tuple[bool, ...] = False,
        norm: Norm | tuple[Norm, ...] = ("bn2d", "bn2d"),
        act_func: Act | tuple[Act, ...] = ("relu6", None),
    ) -> None:
        super().__init__()
        use_bias, norm, act_func = per_conv(use_bias, 2), per_conv(norm, 2), per_conv(act_func, 2)
        self.depth_conv = ConvLayer(
            in_channels,
            in_channels,
            kernel_size,
            stride,
            groups=in_channels,
            use_bias=use_bias[0],
            norm=norm[0],
            act_func=act_func[0],
        )
        self.point_conv = ConvLayer(
            in_channels, out_channels, 1, use_bias=use_bias[1], norm=norm[1], act_func=act_func[1]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(x))


class MBConv(nn.Module):
    """Inverted bottleneck: 1x1 expand -> depthwise kxk (carries the stride) -> 1x1 project."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        mid_channels: int | None = None,
        expand_ratio: float = 6,
        use_bias: bool | tuple[bool, ...] = False,
        norm: Norm | tuple[Norm, ...] = ("bn2d", "bn2d", "bn2d"),
        act_func: Act | tuple[Act, ...] = ("relu6", "relu6", None),
    ) -> None:
        super().__init__()
        use_bias, norm, act_func = per_conv(use_bias, 3), per_conv(norm, 3), per_conv(act_func, 3)
        mid = mid_channels or round(in_channels * expand_ratio)
        self.inverted_conv = ConvLayer(
            in_channels, mid, 1, stride=1, use_bias=use_bias[0], norm=norm[0], act_func=act_func[0]
        )
        self.depth_conv = ConvLayer(
            mid,
            mid,
            kernel_size,
            stride=stride,
            groups=mid,
            use_bias=use_bias[1],
            norm=norm[1],
            act_func=act_func[1],
        )
        self.point_conv = ConvLayer(
            mid, out_channels, 1, use_bias=use_bias[2], norm=norm[2], act_func=act_func[2]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(self.inverted_conv(x)))


class FusedMBConv(nn.Module):
    """MBConv with expansion and depthwise fused into one full kxk conv (faster on early stages)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        mid_channels: int | None = None,
        expand_ratio: float = 6,
        groups: int = 1,
        use_bias: bool | tuple[bool, ...] = False,
        norm: Norm | tuple[Norm, ...] = ("bn2d", "bn2d"),
        act_func: Act | tuple[Act, ...] = ("relu6", None),
    ) -> None:
        super().__init__()
        use_bias, norm, act_func = per_conv(use_bias, 2), per_conv(norm, 2), per_conv(act_func, 2)
        mid = mid_channels or round(in_channels * expand_ratio)
        self.spatial_conv = ConvLayer(
            in_channels,
            mid,
            kernel_size,
            stride,
            groups=groups,
            use_bias=use_bias[0],
            norm=norm[0],
            act_func=act_func[0],
        )
        self.point_conv = ConvLayer(
            mid, out_channels, 1, use_bias=use_bias[1], norm=norm[1], act_func=act_func[1]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.spatial_conv(x))


class ResBlock(nn.Module):
    """Two kxk convs (stride on the first). The name is official; the skip lives in ResidualBlock."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        mid_channels: int | None = None,
        expand_ratio: float = 1,
        use_bias: bool | tuple[bool, ...] = False,
        norm: Norm | tuple[Norm, ...] = ("bn2d", "bn2d"),
        act_func: Act | tuple[Act, ...] = ("relu6", None),
    ) -> None:
        super().__init__()
        use_bias, norm, act_func = per_conv(use_bias, 2), per_conv(norm, 2), per_conv(act_func, 2)
        mid = mid_channels or round(in_channels * expand_ratio)
        self.conv1 = ConvLayer(
            in_channels, mid, kernel_size, stride, use_bias=use_bias[0], norm=norm[0], act_func=act_func[0]
        )
        self.conv2 = ConvLayer(
            mid, out_channels, kernel_size, 1, use_bias=use_bias[1], norm=norm[1], act_func=act_func[1]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class ResidualBlock(nn.Module):
    """``main(x) + shortcut(x)``; with no shortcut it is just ``main`` (downsampling blocks).

    There is no runtime shape check: whether a block is residual is fixed by the builder.
    ``pre_norm``/``post_act`` exist for layout fidelity; no official model sets them.
    """

    def __init__(
        self,
        main: nn.Module | None,
        shortcut: nn.Module | None,
        post_act: nn.Module | None = None,
        pre_norm: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.pre_norm = pre_norm
        self.main = main
        self.shortcut = shortcut
        self.post_act = post_act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.main is None:
            return x
        main_in = x if self.pre_norm is None else self.pre_norm(x)
        if self.shortcut is None:
            return self.main(main_in)
        y = self.main(main_in) + self.shortcut(x)
        if self.post_act is not None:
            y = self.post_act(y)
        return y


class OpSequential(nn.Module):
    """A sequence whose ``None`` entries are dropped, so key indices count only real ops."""

    def __init__(self, op_list: Iterable[nn.Module | None]) -> None:
        super().__init__()
        self.op_list = nn.ModuleList([op for op in op_list if op is not None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.op_list:
            x = op(x)
        return x


class DAGBlock(nn.Module):
    """Read named features, transform each, merge, run a shared trunk, write named outputs.

    The seg head is one of these. The ``add`` merge sums from the right, ``f0 + (f1 + f2)``,
    exactly like the official ``list_sum``: float addition is not associative, and parity is
    judged at 1e-5.
    """

    def __init__(
        self,
        inputs: Mapping[str, nn.Module],
        merge: Literal["add", "cat"],
        post_input: nn.Module | None,
        middle: nn.Module,
        outputs: Mapping[str, nn.Module],
    ) -> None:
        super().__init__()
        if merge not in ("add", "cat"):
            raise ValueError(f"unknown merge {merge!r}")
        self.input_keys = list(inputs.keys())
        self.input_ops = nn.ModuleList(list(inputs.values()))
        self.merge = merge
        self.post_input = post_input
        self.middle = middle
        self.output_keys = list(outputs.keys())
        self.output_ops = nn.ModuleList(list(outputs.values()))

    def forward(self, feature_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        feats = [op(feature_dict[key]) for key, op in zip(self.input_keys, self.input_ops)]
        if self.merge == "add":
            merged = feats[-1]
            for f in reversed(feats[:-1]):
                merged = f + merged
        else:
            merged = torch.cat(feats, dim=1)
        if self.post_input is not None:
            merged = self.post_input(merged)
        y = self.middle(merged)
        for key, op in zip(self.output_keys, self.output_ops):
            feature_dict[key] = op(y)
        return feature_dict


LocalBlockKind = Literal["ds", "mb", "fmb", "res"]


def build_local_block(
    kind: LocalBlockKind | str,
    in_channels: int,
    out_channels: int,
    stride: int,
    expand_ratio: float,
    norm: str,
    act_func: str,
    fewer_norm: bool = False,
) -> nn.Module:
    """The backbones' convolutional block, in its full-norm or fewer-norm form.

    Fewer-norm drops BN from every conv but the last (which then has no bias) and gives those
    convs a bias instead: the later stages of both families are trained this way. ``"res"``
    ignores ``expand_ratio`` (mid = in), as the official large backbone does.
    """
    if kind in ("ds", "fmb", "res"):
        use_bias: bool | tuple[bool, ...] = (True, False) if fewer_norm else False
        norms: Norm | tuple[Norm, ...] = (None, norm) if fewer_norm else norm
        acts = (act_func, None)
        if kind == "ds":
            return DSConv(in_channels, out_channels, 3, stride, use_bias=use_bias, norm=norms, act_func=acts)
        if kind == "fmb":
            return FusedMBConv(
                in_channels,
                out_channels,
                3,
                stride,
                expand_ratio=expand_ratio,
                use_bias=use_bias,
                norm=norms,
                act_func=acts,
            )
        return ResBlock(in_channels, out_channels, 3, stride, use_bias=use_bias, norm=norms, act_func=acts)
    if kind == "mb":
        return MBConv(
            in_channels,
            out_channels,
            3,
            stride,
            expand_ratio=expand_ratio,
            use_bias=(True, True, False) if fewer_norm else False,
            norm=(None, None, norm) if fewer_norm else norm,
            act_func=(act_func, act_func, None),
        )
    raise ValueError(f"unknown local block {kind!r}")


def residual(block: nn.Module, stride: int, in_channels: int, out_channels: int) -> ResidualBlock:
    """Wrap a block with an identity shortcut exactly when shapes allow (stride 1, same width)."""
    identity = stride == 1 and in_channels == out_channels
    return ResidualBlock(block, IdentityLayer() if identity else None)
