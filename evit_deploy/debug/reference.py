"""The PyTorch reference with every mapped module's input and output tapped by hooks."""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from typing_extensions import Self


class ReferenceTaps:
    """``with ReferenceTaps(model, modules) as ref: outputs, inputs = ref.run(batch)``.

    ``outputs[path]`` is the module's output when it is one tensor (a module returning a dict,
    like the backbone, has none); ``inputs[path]`` its input when it takes one tensor. The
    arrays share memory with the module's tensors, which nothing writes to afterwards (the
    model has no in-place ops), so tapping every module costs no copies.
    """

    def __init__(self, model: torch.nn.Module, modules: Iterable[str]) -> None:
        self.model = model
        self.modules = sorted(set(modules))
        self._handles: list[Any] = []
        self._outputs: dict[str, np.ndarray] = {}
        self._inputs: dict[str, np.ndarray] = {}
        self.absent: set[str] = set()  # mapped modules the PyTorch model does not have

    def __enter__(self) -> Self:
        import torch

        self.model.eval()
        for path in self.modules:
            try:
                module = self.model.get_submodule(path)
            except AttributeError:  # a module the export swapped in (the bicubic rewrite's parts)
                self.absent.add(path)
                continue
            self._handles.append(module.register_forward_pre_hook(self._input_hook(path)))
            self._handles.append(module.register_forward_hook(self._output_hook(path)))
        self._torch = torch
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _input_hook(self, path: str) -> Any:
        def hook(module: Any, args: tuple[Any, ...]) -> None:
            tensors = [a for a in args if isinstance(a, self._torch.Tensor)]
            if len(tensors) == 1 and len(args) == 1:
                self._inputs[path] = tensors[0].detach().float().numpy()

        return hook

    def _output_hook(self, path: str) -> Any:
        def hook(module: Any, args: tuple[Any, ...], output: Any) -> None:
            if isinstance(output, self._torch.Tensor):
                self._outputs[path] = output.detach().float().numpy()

        return hook

    def run(self, batch: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        self._outputs, self._inputs = {}, {}
        with self._torch.inference_mode():
            self.model(self._torch.from_numpy(np.ascontiguousarray(batch)))
        return self._outputs, self._inputs
