"""The weight-rounded reference: what a precision alone costs, reported beside the artifact."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from evit_deploy.configs import Tolerances
from evit_deploy.parity import Comparator
from evit_deploy.weight_rounding import per_channel_int8, rounded_copy


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten(),
                               torch.nn.Linear(8 * 30 * 30, 10))


def test_int8_lands_on_each_output_channels_grid():
    weight = torch.randn(16, 4, 3, 3) * torch.linspace(0.01, 3, 16).view(-1, 1, 1, 1)
    rounded = per_channel_int8(weight)
    scale = weight.abs().flatten(1).amax(1) / 127
    steps = rounded.flatten(1) / scale[:, None]
    assert torch.allclose(steps, steps.round(), atol=1e-3)  # integers on each channel's own grid
    assert torch.allclose(rounded.abs().flatten(1).amax(1), weight.abs().flatten(1).amax(1))  # peak kept
    assert ((rounded - weight).abs().flatten(1).amax(1) <= scale / 2 * (1 + 1e-5)).all()
    assert not torch.equal(rounded, weight)


def test_int8_rounds_conv_and_linear_weights_only():
    model = _model()
    rounded = rounded_copy(model, "int8")
    assert rounded is not None and rounded is not model
    for (name, before), after in zip(model.state_dict().items(), rounded.state_dict().values()):
        if name in ("0.weight", "3.weight"):
            assert not torch.equal(before, after) and torch.equal(after, per_channel_int8(before)), name
        else:  # biases and norms stay float, as int8 kernels keep int32 biases and fold the norms
            assert torch.equal(before, after), name


def test_fp16_rounds_every_parameter_and_fp32_rounds_nothing():
    model = _model()
    rounded = rounded_copy(model, "fp16")
    assert rounded is not None
    for before, after in zip(model.parameters(), rounded.parameters()):
        assert torch.equal(after, before.half().float())
    assert rounded_copy(model, "fp32") is None


def _logits(labels: np.ndarray, classes: int = 4) -> np.ndarray:
    """NCHW logits whose argmax is ``labels`` (N x H x W)."""
    return np.moveaxis(np.eye(classes, dtype=np.float32)[labels], -1, 1)


def _comparators(artifact_agree: float, rounded_agree: float) -> tuple[Comparator, Comparator]:
    reference = np.zeros((1, 10, 10), dtype=np.int64)
    tolerances = Tolerances(pixel_agreement=0.99)
    artifact, rounding = Comparator("segmentation", 4, tolerances), Comparator("segmentation", 4, tolerances)
    for comparator, agree in ((artifact, artifact_agree), (rounding, rounded_agree)):
        labels = reference.copy()
        labels.reshape(-1)[: round(100 * (1 - agree))] = 1
        comparator.update({"logits": _logits(labels)}, {"logits": _logits(reference)})
    return artifact, rounding


def test_a_shortfall_the_rounded_weights_share_is_named_as_the_precisions():
    artifact, rounding = _comparators(0.90, 0.95)
    report = artifact.report(weight_rounding=rounding, precision="int8", notes=[], model="m", artifact="a",
                             input_source="x")
    (check,) = [c for c in report.checks if c.name == "task.pixel_agreement"]
    assert not check.passed and check.out_of_reach and check.weights_rounded == pytest.approx(0.95)
    assert check.describe() == ("task.pixel_agreement = 0.9 (needs >= 0.99; the weights rounded alone reach 0.95)")
    assert report.weight_rounding is not None and set(report.weight_rounding) == {"pixel_agreement", "miou"}
    (note,) = report.notes
    assert note.startswith("task.pixel_agreement (weights rounded alone: 0.95): the PyTorch reference misses")
    assert "an int8 artifact cannot be expected to meet it" in note
    assert json.loads(json.dumps(report.to_dict()))["weight_rounding"]["pixel_agreement"] == pytest.approx(0.95)


def test_a_shortfall_of_the_export_alone_gets_no_excuse():
    artifact, rounding = _comparators(0.90, 1.0)
    report = artifact.report(weight_rounding=rounding, precision="int8", notes=[], model="m", artifact="a",
                             input_source="x")
    (check,) = [c for c in report.checks if c.name == "task.pixel_agreement"]
    assert not check.passed and not check.out_of_reach
    assert check.describe() == "task.pixel_agreement = 0.9 (needs >= 0.99)"
    assert report.notes == []


def test_verify_reports_it_for_int8_and_can_skip_it(cli, seeded_checkpoint, calib_photos, test_photos, tmp_path):
    """A real int8 Q/DQ artifact (seg-B0, the TensorRT target's ONNX) on photos it was not calibrated on."""
    weights = seeded_checkpoint("efficientvit_seg_b0_cityscapes")
    result = cli("export", "efficientvit-seg-b0-cityscapes", "--target", "trt", "--precision", "int8", "--plan-only",
                 "--calib", calib_photos, "--calib-samples", 7, "--weights", weights, "--resolution", "128x256",
                 "--out", tmp_path, "-q")
    assert result.code == 0, result
    artifact = Path(result.stdout.strip())
    result = cli("verify", artifact, "--images", test_photos, "--json", "-")
    report = json.loads(result.stdout)
    bound = report["weight_rounding"]
    assert set(bound) == {"pixel_agreement", "miou"} and 0.5 < bound["pixel_agreement"] <= 1.0
    # the weight-rounded reference is a reference run, not the artifact: it never sees int8 activations
    assert bound["pixel_agreement"] >= report["task"]["pixel_agreement"] - 0.02, report
    (check,) = [c for c in report["checks"] if c["name"] == "task.pixel_agreement"]
    assert check["weights_rounded"] == bound["pixel_agreement"]
    skipped = json.loads(cli("verify", artifact, "--images", test_photos, "--no-weight-rounding", "--json", "-").stdout)
    assert skipped["weight_rounding"] is None and skipped["task"] == report["task"]
