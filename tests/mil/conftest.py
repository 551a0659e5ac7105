"""Helpers for the MIL interpreter tests: tiny PyTorch modules -> ML programs -> numpy runs."""
from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("coremltools", reason="the MIL interpreter tests convert modules with coremltools")


def convert(module, inputs: Sequence[np.ndarray], path: Path, *, precision: str = "fp32",
            target: str = "iOS17") -> Path:
    """``module`` (eval) -> ``path`` (.mlpackage) through torch.export, as the Core ML target does."""
    import torch

    from evit_deploy.coreml.tools import import_coremltools, quiet_coremltools

    ct = import_coremltools()
    examples = tuple(torch.from_numpy(x) for x in inputs)
    with torch.no_grad():
        program = torch.export.export(module.eval(), examples).run_decompositions({})
    with quiet_coremltools():
        mlmodel = ct.convert(
            program, convert_to="mlprogram", skip_model_load=True,
            inputs=[ct.TensorType(name=f"in{i}", shape=x.shape, dtype=np.float32) for i, x in enumerate(inputs)],
            outputs=[ct.TensorType(name="out", dtype=np.float32)],
            minimum_deployment_target=getattr(ct.target, target),
            compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
        )
        mlmodel.save(str(path))
    return path


def run_mil(path: Path, inputs: Sequence[np.ndarray]) -> np.ndarray:
    from evit_deploy.mil import Interpreter, load_program

    interpreter = Interpreter(load_program(path))
    return interpreter.run({f"in{i}": x for i, x in enumerate(inputs)})["out"]


def run_torch(module, inputs: Sequence[np.ndarray]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return module.eval()(*(torch.from_numpy(x) for x in inputs)).numpy()


@pytest.fixture
def mlpackage(tmp_path: Path) -> Callable[..., Path]:
    counter = itertools.count()

    def make(module, inputs: Sequence[np.ndarray], **kwargs) -> Path:
        return convert(module, inputs, tmp_path / f"m{next(counter)}.mlpackage", **kwargs)

    return make


def rel_err(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual.astype(np.float64) - expected).max() / max(np.abs(expected).max(), 1e-12))
