"""Changes made to a copy of the model before conversion, each for a measured coremltools limit."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def normalising_wrapper(model: torch.nn.Module, std: tuple[float, float, float]) -> torch.nn.Module:
    """``model(x / std)``: the per-channel part of the normalisation ImageType cannot express."""
    import torch

    class DivideByStd(torch.nn.Module):
        inv_std: torch.Tensor

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner
            self.register_buffer("inv_std", (1.0 / torch.tensor(std, dtype=torch.float32)).reshape(1, 3, 1, 1),
                                 persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x * self.inv_std)

    return DivideByStd(model)


def replace_tanh_gelu(model: torch.nn.Module) -> int:
    """Swap ``nn.GELU(approximate="tanh")`` for the explicit formula, in place; returns how many.

    coremltools 9.0's torch.export frontend reads ``approximate`` only as a positional argument,
    but exported graphs pass it as a keyword: tanh-GELU silently becomes erf-GELU (~1e-4 per
    op; the L-series were trained with tanh). The formula converts to plain elementwise ops.
    """
    import math

    import torch

    class TanhGelu(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))

    swapped = 0
    for name, child in list(model.named_modules()):
        for attr, sub in list(child.named_children()):
            if isinstance(sub, torch.nn.GELU) and sub.approximate == "tanh":
                setattr(child, attr, TanhGelu())
                swapped += 1
    return swapped
