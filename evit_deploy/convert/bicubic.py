"""Exact bicubic upsampling by an integer factor, written with ops every converter maps well.

EfficientViT's seg head upsamples its stride-16/32 projections **bicubically**
(``F.interpolate(mode="bicubic", align_corners=False)``). Neither TFLite nor Core ML has a
bicubic resize: litert-torch decomposes it into GATHER_ND/BROADCAST_TO/MUL chains (exact, but
slow, outside XNNPACK, and poor material for int8), coremltools has no lowering at all.

For an integer factor ``f`` the resize is a fixed linear filter: output pixel ``f*i + p`` reads
the four inputs around ``i + (p + 0.5)/f - 0.5`` with Keys' cubic weights (A = -0.75, PyTorch's
constant), indices clamped to the border. Every phase ``p`` reads offsets in ``[-2, 2]`` around
``i``, so the whole resize is

    replicate-pad by 2 (concatenation of edge slices)
    -> depthwise 5x5 convolution with f*f output channels per input channel (one per phase pair)
    -> pixel shuffle (DEPTH_TO_SPACE in NHWC runtimes)

which reproduces ``F.interpolate`` to float32 rounding (~1e-7 relative): the same weights, only
summed in another order. The weights depend on ``f`` alone, never on the input size, so the
rewrite also holds for dynamic shapes.

Public API (kept stable: the TFLite and Core ML targets both use it):

* ``BicubicUpsample(factor)``: the module.
* ``replace_bicubic_upsampling(model) -> model``: swaps every bicubic, integer-factor
  ``UpSampleLayer`` **in place** and returns the same model (copy it first with
  ``copy.deepcopy`` if the original must stay untouched); ``bicubic_upsample_layers(model)``
  lists what would be swapped. Given example inputs (``examples=``), both also take the resizes
  to a fixed size (EfficientViT-SAM's neck resizes every scale to 64x64): at those input sizes
  each is an integer-factor resize (or, to its own size, the identity: every tap but the
  centre has weight 0), which holds for a static export at exactly those sizes.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BicubicUpsample", "bicubic_phase_weights", "bicubic_upsample_layers", "replace_bicubic_upsampling"]

CUBIC_A = -0.75  # PyTorch's (and OpenCV's) bicubic constant
PAD = 2  # taps of every phase lie within [-2, 2] of the source pixel, for any integer factor >= 2
TAPS = 2 * PAD + 1


def _cubic(x: float, a: float = CUBIC_A) -> float:
    """Keys' cubic convolution kernel, as PyTorch's ``cubic_convolution1/2``."""
    x = abs(x)
    if x <= 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return 0.0


def bicubic_phase_weights(factor: int) -> np.ndarray:
    """(factor, 5) float64: the 1-D weights of output phase p over input offsets -2..2.

    Output index ``f*i + p`` samples the source at ``i + (p + 0.5)/f - 0.5``
    (``align_corners=False``), with taps at ``floor(x) - 1 .. floor(x) + 2``.
    """
    if factor < 2 or int(factor) != factor:
        raise ValueError(f"bicubic rewrite needs an integer factor >= 2, got {factor!r}")
    weights = np.zeros((factor, TAPS), dtype=np.float64)
    for p in range(factor):
        d = (p + 0.5) / factor - 0.5
        base = math.floor(d)
        t = d - base
        for k in range(4):  # taps at base-1 .. base+2, distance to the sample |t - (k - 1)|
            weights[p, base - 1 + k + PAD] = _cubic(t - (k - 1))
    return weights


class BicubicUpsample(nn.Module):
    """``F.interpolate(x, scale_factor=factor, mode="bicubic", align_corners=False)``, exactly,
    as replicate padding + a depthwise 5x5 convolution + pixel shuffle.

    With ``channels`` the depthwise filter bank is a constant (C*f*f, 1, 5, 5) buffer: what
    converters need to emit a plain DEPTHWISE_CONV_2D with static (quantisable) weights. Without
    it the (f*f, 1, 5, 5) bank is tiled to the input's channels in ``forward``; that computes the
    same values, but litert-torch keeps the tiling as runtime ops (BROADCAST_TO + TRANSPOSE on
    the weights), so give ``channels`` whenever it is known. Half-precision input is computed in
    fp32 and returned in fp32, like the ``UpSampleLayer`` it replaces.
    """

    kernel: torch.Tensor

    def __init__(self, factor: int, channels: int | None = None) -> None:
        super().__init__()
        self.factor = int(factor)
        self.channels = channels
        w = bicubic_phase_weights(self.factor)  # (f, 5)
        bank = np.einsum("ik,jl->ijkl", w, w).reshape(self.factor * self.factor, 1, TAPS, TAPS)
        if channels is not None:
            bank = np.tile(bank, (channels, 1, 1, 1))  # output channel c*f*f + i*f + j: pixel_shuffle order
        self.register_buffer("kernel", torch.tensor(bank, dtype=torch.float32), persistent=False)

    @staticmethod
    def _replicate_pad(x: torch.Tensor) -> torch.Tensor:
        """Edge padding by ``PAD`` on H and W, from slices and concatenation only.

        (Converters lower ``F.pad(mode="replicate")`` unevenly: gathers, mirror pads, or not at all.)
        """
        top, bottom = x[:, :, :1, :], x[:, :, -1:, :]
        x = torch.cat([top] * PAD + [x] + [bottom] * PAD, dim=2)
        left, right = x[:, :, :, :1], x[:, :, :, -1:]
        return torch.cat([left] * PAD + [x] + [right] * PAD, dim=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        channels = x.shape[1]
        if self.channels is None:
            weight = self.kernel.to(x.dtype).repeat(channels, 1, 1, 1)
        elif channels != self.channels:
            raise ValueError(f"BicubicUpsample was built for {self.channels} channels, got {channels}")
        else:
            weight = self.kernel
        y = F.conv2d(self._replicate_pad(x), weight, groups=channels)
        return F.pixel_shuffle(y, self.factor)

    def extra_repr(self) -> str:
        return (f"factor={self.factor}, channels={self.channels}, taps={TAPS}x{TAPS}, "
                "exact rewrite of bicubic (align_corners=False)")


def _bicubic(module: nn.Module) -> bool:
    from evit_deploy.nn.layers import UpSampleLayer

    return isinstance(module, UpSampleLayer) and module.mode == "bicubic" and not module.align_corners


def _factors(model: nn.Module, examples: tuple[torch.Tensor, ...] | None) -> dict[str, int]:
    """Layer name -> integer factor, for every bicubic resize the rewrite can take: those given a
    factor, and (with ``examples``) those given a size that is an integer multiple of their input
    at the examples' sizes, found by one forward pass."""
    factors = {name: int(m.factor) for name, m in model.named_modules()
               if _bicubic(m) and m.size is None and m.factor is not None and int(m.factor) == m.factor
               and m.factor >= 2}
    sized = {name: m for name, m in model.named_modules() if _bicubic(m) and m.size is not None}
    if not sized or examples is None:
        return factors
    seen: dict[str, tuple[int, int]] = {}

    def record(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:  # None: the inputs stay as they are
            seen.setdefault(name, tuple(args[0].shape[-2:]))
        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in sized.items()]
    try:
        with torch.no_grad():
            model(*examples)
    finally:
        for hook in hooks:
            hook.remove()
    for name, module in sized.items():
        if name not in seen:
            continue
        (h, w), (out_h, out_w) = seen[name], module.size
        if out_h % h == 0 and out_w % w == 0 and out_h // h == out_w // w:
            factors[name] = out_h // h
    order = [name for name, _ in model.named_modules()]
    return {name: factors[name] for name in order if name in factors}


def bicubic_upsample_layers(model: nn.Module, examples: tuple[torch.Tensor, ...] | None = None) -> list[str]:
    """Qualified names of the ``UpSampleLayer``s ``replace_bicubic_upsampling`` would swap."""
    return list(_factors(model, examples))


def replace_bicubic_upsampling(model: nn.Module, examples: tuple[torch.Tensor, ...] | None = None) -> nn.Module:
    """Swap every integer-factor bicubic ``UpSampleLayer`` for a ``BicubicUpsample``, in place.

    Returns ``model`` itself (modified). ``align_corners=True``, non-integer factors and (without
    ``examples``) resizes to a fixed ``size`` are left alone: call ``bicubic_upsample_layers``
    first to see what will change. A sized resize to its input's own size becomes ``nn.Identity``.
    The channel count of each resize is read from the layer before it in its container (the seg
    heads' ``OpSequential([ConvLayer, UpSampleLayer])``); where there is none, the
    channel-agnostic form is used (same values, weights tiled at run time).
    """
    for name, factor in _factors(model, examples).items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        new = (BicubicUpsample(factor, _channels_before(parent, child)).to(_device_of(model)) if factor > 1
               else nn.Identity())
        if isinstance(parent, (nn.Sequential, nn.ModuleList)) and child.isdigit():
            parent[int(child)] = new
        else:
            setattr(parent, child, new)
    return model


def _channels_before(parent: nn.Module, child: str) -> int | None:
    """Output channels of the sibling just before ``child`` in a sequence container, if known."""
    if not (isinstance(parent, (nn.Sequential, nn.ModuleList)) and child.isdigit()) or int(child) == 0:
        return None
    previous = parent[int(child) - 1]
    convs = [m for m in previous.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        return None
    last = convs[-1]
    # A trailing norm/activation keeps the channel count; anything else after the conv is unknown.
    tail = list(previous.modules())[list(previous.modules()).index(last) + 1:]
    shape_keeping = (nn.modules.batchnorm._BatchNorm, nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.GELU,
                     nn.Dropout, nn.Dropout2d, nn.Identity)
    if any(list(m.children()) == [] and not isinstance(m, shape_keeping) for m in tail):
        return None
    return int(last.out_channels)


def _device_of(model: nn.Module) -> torch.device:
    """Where the rewritten layers' filter banks should live (UpSampleLayer holds no tensors)."""
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")
