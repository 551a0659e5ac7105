"""Will the work fit in memory? Asked before anything is built, so a typo in ``--resolution``
(100000x100000: a 120 GB input alone) or a calibration that outgrows the machine is one line,
not an out-of-memory kill (exit 137, no message, maybe other people's processes with it) or a
traceback.

The estimate runs the model on PyTorch's meta device (shapes only, nothing allocated) and sums
what a forward pass holds at its worst: the input, the weights, and the largest activations a
layer reads and writes at once. It is a floor: runtimes keep more (workspaces, the converter's
own copies), so evit refuses only what cannot fit even then.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from evit_deploy.errors import UsageError

if TYPE_CHECKING:
    import torch

    from evit_deploy.zoo.cards import ModelCard

LIVE_ACTIVATIONS = 3  # a layer's input, its output and one intermediate (an expansion, a residual)


@dataclass(frozen=True)
class MemoryNeed:
    input_bytes: int
    weight_bytes: int
    largest_activation_bytes: int

    @property
    def total(self) -> int:
        return self.input_bytes + self.weight_bytes + LIVE_ACTIVATIONS * self.largest_activation_bytes


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else the physical memory, else None (unknown)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def inference_need(model: torch.nn.Module, shapes: list[tuple[int, ...]]) -> MemoryNeed:
    """What one fp32 forward pass of ``model`` (on the meta device) on inputs of ``shapes`` holds at least."""
    import torch

    largest = 0

    def watch(module: torch.nn.Module, args: object, output: object) -> None:
        nonlocal largest
        for tensor in (output if isinstance(output, (tuple, list)) else (output,)):
            if isinstance(tensor, torch.Tensor):
                largest = max(largest, tensor.numel() * tensor.element_size())

    hooks = [m.register_forward_hook(watch) for m in model.modules()]
    try:
        with torch.no_grad():
            model(*(torch.empty(shape, device="meta") for shape in shapes))
    finally:
        for hook in hooks:
            hook.remove()
    inputs = sum(4 * _count(shape) for shape in shapes)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return MemoryNeed(inputs, weights, largest)


def check_card_fits(card: ModelCard, shape: tuple[int, ...]) -> None:
    """Refuse a one-image model at ``shape`` that cannot run here (built on the meta device: no memory)."""
    import torch

    from evit_deploy.nn import build_model

    with torch.device("meta"):
        model = build_model(card.builder, norm_eps=card.norm_eps, **card.builder_kwargs)
    check_fits(inference_need(model, [shape]), f"{card.name} at {'x'.join(str(d) for d in shape)}")


def _count(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def check_fits(need: MemoryNeed, what: str) -> None:
    """UsageError when ``need`` exceeds the memory available here (nothing is refused when unknown)."""
    available = available_bytes()
    if available is None or need.total <= available:
        return
    raise UsageError(f"{what} needs about {_gb(need.total)} for one inference (largest activation "
                     f"{_gb(need.largest_activation_bytes)}, input {_gb(need.input_bytes)}), more than the "
                     f"{_gb(available)} available here; choose a smaller --resolution or --batch")


def _gb(size: int) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"


def require(needed: int, what: str, hint: str) -> None:
    """Refuse ``what`` in one line when it needs more than the memory available now."""
    available = available_bytes()
    if available is not None and needed > available:
        raise UsageError(f"{what} needs about {_gb(needed)} of memory but {_gb(available)} are available; {hint}")
