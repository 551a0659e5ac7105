"""The PyTorch reference, as a Runner like any other.

``verify`` compares every artifact against this runner and ``profile --target torch``
times it, so eager PyTorch is measured by the same harness as the runtimes.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from evit_deploy.contracts import Runner
from evit_deploy.spec import InputSpec, TensorInfo

if TYPE_CHECKING:
    import torch


class TorchRunner(Runner):
    """Eager PyTorch (fp32, CPU) on an already-built module."""

    backend = "torch"

    def __init__(self, model: torch.nn.Module, inputs: InputSpec | Sequence[TensorInfo], *,
                 threads: int | None = None, output_names: list[str] | None = None) -> None:
        """``inputs``: the image ``InputSpec`` of a one-image model, or a graph's inputs in call order."""
        super().__init__()
        self.model = model
        self.threads = threads
        self.inputs = [TensorInfo(inputs.name, inputs.shape)] if isinstance(inputs, InputSpec) else list(inputs)
        self.output_names = output_names or ["logits"]
        self.outputs = [TensorInfo(name, ()) for name in self.output_names]

    def load(self) -> None:
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        self.model.eval()

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            result = self.model(*(torch.from_numpy(np.ascontiguousarray(feed[i.name])) for i in self.inputs))
        tensors = result if isinstance(result, (tuple, list)) else [result]
        return {n: t.detach().float().numpy() for n, t in zip(self.output_names, tensors)}

    def describe(self) -> dict[str, Any]:
        import torch

        return {"backend": self.backend, "version": torch.__version__, "device": "cpu",
                "threads": torch.get_num_threads(), "precision": "fp32"}
