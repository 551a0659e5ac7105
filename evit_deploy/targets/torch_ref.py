"""The PyTorch reference, as a Runner like any other.

``verify`` compares every artifact against this runner and ``profile --target torch``
times it, so eager PyTorch is measured by the same harness as the runtimes. ``run`` (what
``verify`` calls; timing calls ``infer``) also watches LiteMLA for tokens whose output fp32
rounding decides (``evit_deploy.nn.ties``) and returns the other outcomes with its own.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from evit_deploy.contracts import AmbiguousOutputs, Runner
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

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Canonical outputs; ``AmbiguousOutputs`` when a float64 run shows an attention token's output to
        be decided by rounding (then also the outputs with each such tie broken the other way)."""
        import torch

        from evit_deploy.nn.ties import TieWatch, flipped_outputs, ill_conditioned

        watch = TieWatch(self.model)
        with watch.watching():
            outputs = super().run(feed)
        exact_inputs = [torch.from_numpy(np.asarray(x, np.float64) if x.dtype.kind == "f" else np.asarray(x))
                        for x in (feed[i.name] for i in self.inputs)]
        ties = ill_conditioned(self.model, lambda model: model(*exact_inputs), watch.ties)
        if not ties:
            return outputs
        alternatives = flipped_outputs(self.model, lambda: super(TorchRunner, self).run(feed), ties)
        return AmbiguousOutputs(outputs, alternatives, [tie.describe() for tie in ties])

    def describe(self) -> dict[str, Any]:
        import torch

        return {"backend": self.backend, "version": torch.__version__, "device": "cpu",
                "threads": torch.get_num_threads(), "precision": "fp32"}
