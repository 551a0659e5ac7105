"""``--min-agreement`` from the command line, the same on every int8 target: an unreachable target
exits 1 keeping the best artifact under a name that says so, and bad options exit 2 before
anything is written. Seeded seg-B0 at 64x128, 7 calibration photos (2 held out).
"""
from __future__ import annotations

import json

import pytest

from .conftest import SEG, export_int8

TARGETS = ["tflite", "onnx", "trt"]


@pytest.mark.parametrize("target", TARGETS)
def test_an_unreachable_target_exits_1_keeping_the_best_artifact_under_a_name_that_says_so(
        cli, tmp_path, seg_weights, calib_photos, target):
    result = export_int8(cli, tmp_path, calib_photos, seg_weights, target, "--min-agreement", "0.9999",
                     "--max-float-share", "0.1")  # two candidates: plain, and the most it may keep float
    assert result.code == 1, result
    assert len(result.error_lines) == 1 and "Traceback" not in result.stderr, result
    line = result.error_lines[0]
    suffix = ".tflite" if target == "tflite" else ".onnx"
    assert "--min-agreement 0.9999" in line and f"below-min-agreement{suffix}" in line
    kept = tmp_path / f"{SEG}.below-min-agreement{suffix}"
    manifest = json.loads((tmp_path / f"{SEG}.below-min-agreement.evit.json").read_text())
    assert kept.is_file() and not (tmp_path / f"{SEG}{suffix}").exists()
    control = manifest["details"]["int8"]["accuracy_control"]
    assert not control["met"] and control["agreement"] < 0.9999
    assert control["agreement"] == max(step["agreement"] for step in control["steps"])  # the best one found
    if target == "trt":  # the plan and script build the kept ONNX, under the same name
        plan = json.loads((tmp_path / f"{SEG}.below-min-agreement.trt-plan.json").read_text())
        assert plan["onnx"] == kept.name and plan["engine"] == f"{SEG}.below-min-agreement.engine"


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(("extra", "needle"), [
    (("--min-agreement", "0"), "min_agreement"),
    (("--min-agreement", "0.9", "--precision", "fp16"), "controls int8"),
    (("--min-agreement", "0.9", "--calib-samples", "1"), "at least 2"),
    (("--min-agreement", "0.9", "--holdout", "1"), "holdout"),
])
def test_bad_accuracy_control_options_exit_2_before_writing(cli, tmp_path, seg_weights, calib_photos, target, extra,
                                                           needle):
    result = export_int8(cli, tmp_path / "out", calib_photos, seg_weights, target, *extra)
    assert result.code == 2, result
    assert len(result.error_lines) == 1 and needle in result.error_lines[0], result
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
