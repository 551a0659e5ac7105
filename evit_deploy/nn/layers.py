"""Basic layers of EfficientViT: the conv/linear wrappers every block is built from.

Every learnable piece is a stock PyTorch module with the official attribute names
(``conv``, ``norm``, ``linear``), so official checkpoints load by name with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ConvLayer",
    "IdentityLayer",
    "LayerNorm2d",
    "LinearLayer",
    "UpSampleLayer",
    "autocast_disabled",
    "build_act",
    "build_norm",
    "per_conv",
    "set_norm_eps",
]

T = TypeVar("T")


def build_act(name: str | None) -> nn.Module | None:
    """Activation by official name; ``None`` (or an unknown name) means "no activation".

    GELU is the tanh approximation everywhere: the L-series checkpoints were trained with it,
    and the erf form moves outputs well past the parity budget.
    """
    if name == "relu":
        return nn.ReLU()
    if name == "relu6":
        return nn.ReLU6()
    if name == "hswish":
        return nn.Hardswish()
    if name == "silu":
        return nn.SiLU()
    if name == "gelu":
        return nn.GELU(approximate="tanh")
    return None


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map, one pixel at a time (SAM's encoder and decoder).

    A subclass of ``nn.LayerNorm`` so checkpoints see ``weight``/``bias`` and the zoo's eps
    setter reaches it. Written out (mean, biased variance, sqrt, divide) in the official
    order rather than permuting to NHWC for ``F.layer_norm``: the embeddings are judged at
    1e-5 and the exported graph stays a plain chain of reductions.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm_2d(x, self.weight if self.elementwise_affine else None,
                             self.bias if self.elementwise_affine else None, self.eps)


def layer_norm_2d(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """``LayerNorm2d``'s arithmetic. A function of its own so that converters tracing source lines
    (Core ML's fp16 island selector, ``evit_deploy.coreml.precision``) can name it."""
    centred = x - torch.mean(x, dim=1, keepdim=True)
    out = centred / torch.sqrt(torch.square(centred).mean(dim=1, keepdim=True) + eps)
    if weight is not None and bias is not None:
        out = out * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)
    return out


def build_norm(name: str | None, num_features: int) -> nn.Module | None:
    """Norm by official name. eps stays at PyTorch's 1e-5 here; the zoo sets it per family."""
    if name == "bn2d":
        return nn.BatchNorm2d(num_features)
    if name == "ln":
        return nn.LayerNorm(num_features)
    if name == "ln2d":
        return LayerNorm2d(num_features)
    return None


def per_conv(value: T | Sequence[T], n: int) -> tuple[T, ...]:
    """Spread a per-block setting over the block's ``n`` convs.

    A scalar applies to every conv; a short tuple is padded with its last entry (the official
    ``val2tuple``), so ``use_bias=False`` means "no conv of the block has a bias".
    """
    if isinstance(value, (list, tuple)):
        items = tuple(value)
    else:
        items = (value,)
    if len(items) < n:
        items = items + (items[-1],) * (n - len(items))
    return items  # type: ignore[return-value]


class ConvLayer(nn.Module):
    """[Dropout2d] -> Conv2d (symmetric ``k//2`` padding) -> [norm] -> [act].

    Absent parts are not registered at all, which is what keeps the key layout official.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        use_bias: bool = False,
        dropout: float = 0.0,
        norm: str | None = "bn2d",
        act_func: str | None = "relu",
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"ConvLayer needs an odd kernel size for symmetric padding, got {kernel_size}")
        padding = (kernel_size // 2) * dilation
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else None
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size=(kernel_size, kernel_size),
            stride=(stride, stride),
            padding=padding,
            dilation=(dilation, dilation),
            groups=groups,
            bias=use_bias,
        )
        self.norm = build_norm(norm, out_channels)
        self.act = build_act(act_func)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dropout is not None:
            x = self.dropout(x)
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.act is not None:
            x = self.act(x)
        return x


class LinearLayer(nn.Module):
    """Flatten -> [Dropout] -> Linear -> [norm] -> [act]; flattening lets it follow a global pool."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        use_bias: bool = True,
        dropout: float = 0.0,
        norm: str | None = None,
        act_func: str | None = None,
    ) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.linear = nn.Linear(in_features, out_features, bias=use_bias)
        self.norm = build_norm(norm, out_features)
        self.act = build_act(act_func)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() > 2:
            x = torch.flatten(x, start_dim=1)
        if self.dropout is not None:
            x = self.dropout(x)
        x = self.linear(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.act is not None:
            x = self.act(x)
        return x


class IdentityLayer(nn.Module):
    """The shortcut of a residual block (a named module so the official structure is kept)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def autocast_disabled(device_type: str) -> AbstractContextManager[object]:
    """A context that turns autocast off on ``device_type``, or a no-op when it is already off.

    Entering ``torch.autocast`` only when autocast is actually active keeps exported graphs
    free of autocast regions (``torch.export`` sees a plain forward).
    """
    if device_type in ("cuda", "cpu", "xpu", "mps") and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return nullcontext()


class UpSampleLayer(nn.Module):
    """Bicubic resize (``align_corners=False``) computed in fp32.

    Half-precision input is upcast and the result is deliberately *not* cast back, as in the
    official layer: the seg head's merge then runs in fp32. Only ``factor == 1`` is a no-op; the
    official same-size shortcut never fires (tuple vs list), so a resize to the current size
    still runs and still returns fp32.
    """

    def __init__(
        self,
        mode: str = "bicubic",
        size: int | Sequence[int] | None = None,
        factor: int = 2,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.mode = mode
        self.size: list[int] | None = list(per_conv(size, 2)) if size is not None else None
        self.factor: int | None = None if self.size is not None else factor
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.factor == 1:
            return x
        with autocast_disabled(x.device.type):
            if x.dtype in (torch.float16, torch.bfloat16):
                x = x.float()
            if self.mode in ("nearest", "area"):
                return F.interpolate(x, size=self.size, scale_factor=self.factor, mode=self.mode)
            return F.interpolate(
                x,
                size=self.size,
                scale_factor=self.factor,
                mode=self.mode,
                align_corners=self.align_corners,
            )

    def extra_repr(self) -> str:
        target = f"size={self.size}" if self.size is not None else f"factor={self.factor}"
        return f"mode={self.mode}, {target}, align_corners={self.align_corners}"


def set_norm_eps(model: nn.Module, eps: float) -> nn.Module:
    """Set eps on every BatchNorm, LayerNorm and GroupNorm (what the official zoo does).

    eps is not stored in checkpoints, yet the L-series was trained with 1e-7: leaving PyTorch's
    1e-5 visibly changes L outputs. LiteMLA's eps is a different constant and is left alone.
    """
    for module in model.modules():
        if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)):
            module.eps = eps
    return model
