"""Core ML ML programs in evit's MIL interpreter: every variable is observable, any part runnable.

This checks what the converter wrote (op by op, fp16 rounding where the program has fp16),
not Apple's kernels: the Core ML runtime exposes no intermediate tensors. On macOS the
artifact's own runner (Core ML) still gives ``deployed_output``, so a gap between the two
is the runtime's, not a layer's.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from evit_deploy.debug.capture import CannotRunAlone, Capture
from evit_deploy.debug.metrics import in_shape
from evit_deploy.errors import EvitError

if TYPE_CHECKING:  # pragma: no cover
    from evit_deploy.contracts import Runner
    from evit_deploy.layer_map import LayerEntry
    from evit_deploy.spec import InputSpec


class MilCapture(Capture):
    def __init__(self, runner: Runner, path: Any, spec: InputSpec, image_input: bool) -> None:
        super().__init__(runner)
        self.path, self.spec, self.image_input = path, spec, image_input
        self._mil: Any = None  # a MilRunner: prepares inputs the way verify does
        self._wanted: set[str] = set()

    def load(self, tensors: Sequence[str]) -> list[str]:
        from evit_deploy.coreml.runner import MilRunner

        self.runner.load()
        self._mil = self.runner if isinstance(self.runner, MilRunner) else MilRunner(self.path, self.spec,
                                                                                   image_input=self.image_input)
        if self._mil is not self.runner:
            self._mil.load()
        made = {name for op in self._mil.interpreter.steps for name, _ in op.outputs}
        self._wanted = {t for t in tensors if t in made}
        return [f"{t} (not computed by the ML program)" for t in tensors if t not in made]

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values: dict[str, np.ndarray] = {}

        def observe(op: Any, produced: dict[str, np.ndarray]) -> None:
            for name, value in produced.items():
                if name in self._wanted:
                    values[name] = np.asarray(value, dtype=np.float32)

        outputs = self._mil.interpreter.run(self._mil.prepare(feed), observe=observe)
        values.update({name: np.asarray(v, dtype=np.float32) for name, v in outputs.items()})
        return values

    def run_alone(self, entry: LayerEntry, inputs: dict[str, np.ndarray]) -> np.ndarray:
        declared = {name: ttype for op in self._mil.interpreter.steps for name, ttype in op.outputs}
        declared.update(dict(self._mil.interpreter.program.inputs))
        given = {}
        for name, value in inputs.items():
            shape = tuple(declared[name].shape) if name in declared else value.shape
            shaped = in_shape(value, shape) if None not in shape else value
            if shaped is None:
                raise CannotRunAlone(f"the reference's {name} has shape {list(value.shape)}, the program's {list(shape)}")
            given[name] = shaped
        try:
            (value,) = self._mil.interpreter.run_part(given, [entry.tensor]).values()
        except EvitError as err:
            raise CannotRunAlone(str(err)) from None
        return np.asarray(value, dtype=np.float32)

    def close(self) -> None:
        if self._mil is not None and self._mil is not self.runner:
            self._mil.close()
        super().close()

    def describe(self) -> dict[str, object]:
        return {**self.runner.describe(), "exposed": "evit's MIL interpreter: every variable of the ML program"}
