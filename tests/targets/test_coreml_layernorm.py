"""Core ML fp16 keeps LayerNorms in fp32 (the ``layernorm`` island), shown on a toy whose LayerNorm
inputs are in the thousands: fp16 holds them, not their squares (seconds; the SAM encoder and decoder
are in tests/sam_targets)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("coremltools", reason="the Core ML target needs coremltools: pip install 'evit-deploy[coreml]'")

from evit_deploy.contracts import ExportContext
from evit_deploy.coreml.export import export_artifact
from evit_deploy.coreml.options import CoreMLOptions
from evit_deploy.coreml.runner import MilRunner
from evit_deploy.nn.layers import LayerNorm2d
from evit_deploy.spec import GraphInput, GraphIO, InputSpec


class _LoudNorms(torch.nn.Module):
    """conv (outputs ~1e3) -> LayerNorm2d -> nn.LayerNorm over channels-last -> back to NCHW."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 1)
        self.norm2d = LayerNorm2d(16, eps=1e-6)
        self.norm = torch.nn.LayerNorm(16, eps=1e-6)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(16, 3, 1, 1, generator=generator) * 1000)
            for norm in (self.norm2d, self.norm):
                norm.weight.copy_(torch.rand(16, generator=generator) + 0.5)
                norm.bias.copy_(torch.randn(16, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm2d(self.conv(x))
        return self.norm(y.permute(0, 2, 3, 1) * 300).permute(0, 3, 1, 2)


def _export(tmp_path: Path, keep: list[str]) -> tuple[Path, dict]:
    spec = InputSpec(1, 8, 8, (0.5,) * 3, (0.5,) * 3)
    io = GraphIO((GraphInput("input", (1, 3, 8, 8)),), ("y",))
    ctx = ExportContext(model_name="norms", task="segmentation", classes=[], workdir=tmp_path, graph=io)
    result = export_artifact(_LoudNorms().eval(), spec, "fp16", CoreMLOptions(keep_fp32=keep), ctx)
    return result.files[0], result.details


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    with MilRunner(path, InputSpec(1, 8, 8, (0.5,) * 3, (0.5,) * 3)) as runner:
        return runner.run({"input": x})["y"]


def test_layernorms_stay_fp32_and_that_keeps_fp16_finite(tmp_path):
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        reference = _LoudNorms().eval()(torch.from_numpy(x)).numpy()
    kept, details = _export(tmp_path / "kept", ["layernorm"])
    islands = details["compute_precision"]["islands"]["layernorm"]
    assert islands["fp16"] == 0 and islands["fp32"] >= 8  # LayerNorm2d's chain and nn.LayerNorm's layer_norm
    assert details["fp32_islands"]["layernorm"] == islands["fp32"]
    out = _run(kept, x)
    assert np.isfinite(out).all() and np.abs(out - reference).max() <= 2e-2 * np.abs(reference).max()
    naive, details = _export(tmp_path / "naive", [])
    assert details["compute_precision"]["islands"] == {}
    bad = _run(naive, x)
    assert not np.isfinite(bad).all() or np.abs(bad - reference).max() > 0.5 * np.abs(reference).max()
