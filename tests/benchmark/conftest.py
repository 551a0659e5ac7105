"""The benchmark's test set-up: seg-B0 at 64x128 with seeded weights, a small Cityscapes-layout dataset
(from ``tests/evaluation``), real calibration photos, and one target whose converter is made to fail.

The failing target is the real TFLite target handed a model with an op litert-torch cannot lower
(``aten.erfinv``, as in ``tests/test_toolchain.py``): its row fails the way a converter crash does,
with litert-torch's own error, while every other row runs.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from evaluation.conftest import cityscapes, seg_weights  # noqa: F401 (fixtures used by the tests here)

from evit_deploy.targets import base
from evit_deploy.targets.tflite import TfliteTarget

MODEL = "efficientvit-seg-b0-cityscapes"
RES = "64x128"
BROKEN = "tflite-erfinv"


class _WithErfinv(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.erfinv(torch.tanh(self.model(x)))


class ErfinvTflite(TfliteTarget):
    """The TFLite target, given the model with an op its converter cannot lower."""

    name = BROKEN
    description = "test only: TFLite export of a model litert-torch cannot convert"

    def export(self, model: Any, spec: Any, recipe: Any, ctx: Any) -> Any:
        return super().export(_WithErfinv(model), spec, recipe, ctx)


@pytest.fixture(scope="module")
def broken_target() -> Iterator[str]:
    """Registered for the module that asks for it only: every other test sees the real list of targets."""
    base.register()(ErfinvTflite)
    yield BROKEN
    base._REGISTRY.pop(BROKEN, None)


@pytest.fixture(scope="session")
def run_cli():
    """``run_cli(*args)`` -> (exit code, stdout, stderr): ``evit`` in-process, usable from session fixtures."""
    from typer.testing import CliRunner

    from evit_deploy.cli import app

    def invoke(*args: object) -> tuple[int, str, str]:
        result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    return invoke


def matrix_args(weights: Path, data: Path, calib: Path, out: Path, *extra: object) -> list[object]:
    """The fast suite's matrix: every target here at fp16 and int8, the failing one beside them."""
    return [MODEL, "--weights", weights, "--targets", f"onnx,tflite,coreml,trt,{BROKEN}", "--precisions",
            "fp16,int8", "--resolution", RES, "--data", data, "--calib", calib, "--samples", 2, "--threads", 1,
            "--warmup", 1, "--iters", 3, "--out", out, *extra]
