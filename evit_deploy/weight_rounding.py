"""What rounding the weights alone costs: the bar a reduced-precision artifact is held against.

An fp16 or int8 artifact departs from PyTorch in two ways: it stores its weights rounded, and it
computes (fp16) or stores (int8) its activations at lower precision. The first comes with the
precision; only the second is the conversion's doing. ``verify`` therefore runs the reference a
second time with only its weights rounded the way the artifact stores them, and reports that
model's task agreement beside the artifact's.

When the weight-rounded model itself falls short of a threshold, an artifact of that precision
cannot be expected to meet it for these weights on these inputs: the model's decision margins are
thinner than the precision's resolution (an untrained or barely trained checkpoint, ambiguous
inputs), and the export is not what to fix. When the weight-rounded model clears the threshold and the artifact
does not, the activations are losing it (calibration, ranges, layers that should stay float).
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PRECISIONS = ("fp16", "int8")


def rounded_copy(model: torch.nn.Module, precision: str) -> torch.nn.Module | None:
    """A copy of ``model`` whose weights hold what a ``precision`` artifact stores, in fp32.

    fp16: every floating-point parameter rounded to the nearest fp16 (as fp16 weight storage
    does). int8: every convolution and linear weight quantised per output channel, symmetric,
    scale = max|w| / 127 (what LiteRT, ONNX Runtime's QDQ and TensorRT store); biases and norms
    stay float, as int8 kernels keep int32 biases and fold the norms. None for fp32, which
    rounds nothing.
    """
    import torch

    if precision not in PRECISIONS:
        return None
    rounded = copy.deepcopy(model).eval()
    with torch.no_grad():
        if precision == "fp16":
            for param in rounded.parameters():
                if param.is_floating_point():
                    param.copy_(param.half().float())
        else:
            for module in rounded.modules():
                if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                    module.weight.copy_(per_channel_int8(module.weight))
    return rounded


def per_channel_int8(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` quantised to int8 per output channel (axis 0), symmetric, and dequantised."""
    import torch

    peak = weight.detach().abs().flatten(1).amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
    scale = (peak / 127).view(-1, *([1] * (weight.dim() - 1)))
    return torch.round(weight / scale).clamp(-127, 127) * scale
