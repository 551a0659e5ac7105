"""Runs an ML program's operations in order on numpy arrays.

Every op's result is cast to the type and checked against the shape the program declares
for it, so fp16 rounding happens exactly where the converter put fp16 and a misread op
fails at the op instead of as a parity miss at the output. Ops whose inputs are all
constants (weights, ``constexpr_*`` decompression) run once, at construction.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from evit_deploy.errors import EvitError, UsageError
from evit_deploy.mil.ops import REGISTRY
from evit_deploy.mil.program import Operation, Program, TensorType


class UnsupportedOp(UsageError):
    """The program uses an op (or an op variant) the MIL runner does not implement: exit 2."""


class MilError(EvitError):
    """An op produced something other than what the program declares (a runner defect)."""


def unknown_ops(program: Program) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op in program.operations:
        if op.type not in REGISTRY:
            counts[op.type] = counts.get(op.type, 0) + 1
    return counts


class Interpreter:
    """``Interpreter(program).run({"input": x})`` -> ``{output name: array}``."""

    def __init__(self, program: Program) -> None:
        missing = unknown_ops(program)
        if missing:
            listed = ", ".join(f"{name!r} ({count}x)" for name, count in sorted(missing.items()))
            raise UnsupportedOp(
                f"{program.path.name}: the MIL runner does not implement op(s) {listed}; "
                "it checks the converter's program op by op and refuses to guess"
            )
        self.program = program
        self.constants: dict[str, Any] = {}
        self.steps: list[Operation] = []
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for op in program.operations:
                if op.type == "const":
                    (name, ttype), = op.outputs
                    self.constants[name] = _as_declared(op.attributes["val"], ttype)
                elif all(isinstance(b, np.ndarray) or b in self.constants for bs in op.inputs.values() for b in bs):
                    self._apply(op, self.constants)
                else:
                    self.steps.append(op)

    @property
    def input_types(self) -> dict[str, TensorType]:
        return dict(self.program.inputs)

    def run(self, feed: dict[str, np.ndarray], *,
            observe: Callable[[Operation, dict[str, np.ndarray]], None] | None = None) -> dict[str, np.ndarray]:
        """Evaluate the program; ``observe(op, outputs)`` sees every op's results (debugging, tests)."""
        env: dict[str, Any] = dict(self.constants)
        for name, ttype in self.program.inputs:
            if name not in feed:
                raise UsageError(f"the ML program needs input {name!r}; got {sorted(feed)}")
            value = np.asarray(feed[name])
            _check_shape(value, ttype, f"input {name!r}")
            env[name] = value.astype(ttype.dtype, copy=False)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for op in self.steps:
                produced = self._apply(op, env)
                if observe is not None:
                    observe(op, produced)
        return {name: env[name] for name in self.program.outputs}

    def run_part(self, given: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        """Only the steps that make ``outputs`` from ``given`` (variable name -> array, standing in
        for whatever computes it in the program, cast to its declared type): one part alone."""
        declared = {name: ttype for op in self.steps for name, ttype in op.outputs}
        declared.update(dict(self.program.inputs))
        producer = {name: op for op in self.steps for name, _ in op.outputs}
        needed: set[int] = set()
        stack = list(outputs)
        while stack:
            name = stack.pop()
            if name in given or name in self.constants:
                continue
            if name not in producer:
                raise UsageError(f"the ML program's {name!r} is neither given nor computed by any op")
            op = producer[name]
            if id(op) not in needed:
                needed.add(id(op))
                stack.extend(b for bound in op.inputs.values() for b in bound if isinstance(b, str))
        env: dict[str, Any] = dict(self.constants)
        for name, value in given.items():
            env[name] = _as_declared(value, declared[name]) if name in declared else value
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for op in self.steps:
                if id(op) in needed:
                    self._apply(op, env)
        return {name: env[name] for name in outputs}

    def _apply(self, op: Operation, env: dict[str, Any]) -> dict[str, np.ndarray]:
        definition = REGISTRY[op.type]
        kwargs: dict[str, Any] = {}
        for key, bound in op.inputs.items():
            values = [env[b] if isinstance(b, str) else b for b in bound]
            kwargs[key] = values if key in definition.lists else values[0]
        for key, value in op.attributes.items():  # iOS16 constexpr ops take their data as attributes
            if key != "name" and key not in kwargs:
                kwargs[key] = value
        try:
            result = definition.fn(**kwargs)
        except NotImplementedError as err:
            raise UnsupportedOp(f"the MIL runner does not implement {op.type!r} with {err} (op {op.name!r})") from None
        except TypeError as err:
            raise UnsupportedOp(f"MIL op {op.type!r} ({op.name!r}) has inputs the runner does not know: {err}") from None
        results = result if isinstance(result, (list, tuple)) else [result]
        if len(results) != len(op.outputs):
            raise MilError(f"MIL op {op.type!r} ({op.name!r}) gave {len(results)} outputs, the program declares "
                           f"{len(op.outputs)}")
        produced = {}
        for (name, ttype), value in zip(op.outputs, results):
            array = _as_declared(value, ttype)
            _check_shape(array, ttype, f"MIL op {op.type!r} ({op.name!r})")
            env[name] = produced[name] = array
        return produced


def _as_declared(value: Any, ttype: TensorType) -> Any:
    if isinstance(value, (str, dict)) or ttype.dtype == "str":
        return value
    return np.asarray(value).astype(ttype.dtype, copy=False)


def _check_shape(value: Any, ttype: TensorType, what: str) -> None:
    if not isinstance(value, np.ndarray):
        return
    declared = ttype.shape
    if len(declared) != value.ndim or any(d is not None and d != s for d, s in zip(declared, value.shape)):
        raise MilError(f"{what} has shape {list(value.shape)}, the ML program declares {ttype}")
