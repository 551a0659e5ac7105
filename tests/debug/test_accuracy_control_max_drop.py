"""``--max-drop D --data DIR``: int8 accuracy control held to the task metric on the user's labelled
data, the same on every int8 target. The mIoU that decides what stays float is the one `evit eval`
reports for the artifact; an unreachable drop exits 1 keeping the best artifact under a name that
says so; every misuse exits 2 before anything is written. Seeded seg-B0 at 64x128, 7 calibration
photos, 6 labelled test photos (labels: PyTorch's own classes, so PyTorch scores 100 mIoU).
"""
from __future__ import annotations

import json

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from properties.strategies import FAST_CLI, fast

from .conftest import RESOLUTION, SEG, export_int8

TARGETS = ["tflite", "onnx", "trt"]
SUFFIX = {"tflite": ".tflite", "onnx": ".onnx", "trt": ".onnx"}


@pytest.mark.parametrize("target", TARGETS)
def test_an_unreachable_drop_exits_1_keeping_plain_int8_as_over_max_drop_scored_as_eval_scores_it(
        cli, tmp_path, seg_weights, calib_photos, labelled_seg, target):
    """No layer may go float (--max-float-share 0), so nothing is ranked: plain int8 is measured against
    the bar and kept; `evit eval` on the same data finds the drop the control reported (the TFLite
    artifact's NHWC logits included)."""
    from evit_deploy.evaluation import evaluate

    result = export_int8(cli, tmp_path, calib_photos, seg_weights, target, "--max-drop", "0", "--data", labelled_seg,
                     "--max-float-share", "0")
    assert result.code == 1, result
    assert len(result.error_lines) == 1 and "Traceback" not in result.stderr, result
    line = result.error_lines[0]
    assert "mIoU" in line and "(--max-drop 0 under PyTorch's 100.00) with no layer allowed float" in line, line
    kept = tmp_path / f"{SEG}.over-max-drop{SUFFIX[target]}"
    assert line.endswith(f"the best artifact is kept as {kept}") and not (tmp_path / f"{SEG}{SUFFIX[target]}").exists()
    control = json.loads((tmp_path / f"{SEG}.over-max-drop.evit.json").read_text())["details"]["int8"][
        "accuracy_control"]
    assert control["measure"] == "mIoU" and control["pytorch"] == pytest.approx(1.0) and control["ranking"] == []
    assert control["scored_on"] == "6 labelled image(s) of --data" and control["held_out_images"] == 6
    assert not control["met"] and control["kept_float"] == [] and control["drop"] == control["plain_int8_drop"] > 0
    if target != "trt":  # TensorRT's Q/DQ ONNX is scored on ONNX Runtime, where no runner of its own exists here
        scored = evaluate(kept, labelled_seg)
        assert scored.reference is not None and scored.reference.metrics["miou"] == pytest.approx(100.0)
        assert scored.drop == pytest.approx(100 * control["drop"], abs=1e-6)


def test_a_reachable_drop_is_met_with_layers_float_and_eval_measures_the_drop_the_control_did(
        cli, tmp_path, seg_weights, calib_photos, labelled_seg):
    """Half of plain int8's loss: layers go float until it is met, and `evit eval` on the same data reports
    the drop the control measured. The controlled recipe asks for --min-agreement; --max-drop takes its
    place."""
    from evit_deploy.evaluation import evaluate

    common = ("--config", "onnx-int8-controlled", "--data", labelled_seg)
    probe = export_int8(cli, tmp_path / "probe", calib_photos, seg_weights, "onnx", *common, "--max-drop", "0",
                    "--max-float-share", "0")  # plain int8 alone
    assert probe.code == 1, probe
    plain_drop = 100 * json.loads(next((tmp_path / "probe").glob("*.evit.json")).read_text())[
        "details"]["int8"]["accuracy_control"]["plain_int8_drop"]
    assert plain_drop > 1.0  # seeded weights at 64x128 lose points of mIoU in plain int8
    allowed = round(plain_drop / 2, 2)
    result = export_int8(cli, tmp_path / "out", calib_photos, seg_weights, "onnx", *common, "--max-drop", allowed,
                     "--max-float-share", "1")
    assert result.code == 0, result
    control = json.loads((tmp_path / "out" / f"{SEG}.evit.json").read_text())["details"]["int8"]["accuracy_control"]
    assert control["met"] and control["kept_float"] and 100 * control["drop"] <= allowed
    assert control["max_drop"] == allowed and "min_agreement" not in json.dumps(control)
    assert f"mIoU {100 - 100 * control['drop']:.2f} >= " in result.stderr + result.stdout
    scored = evaluate(tmp_path / "out" / f"{SEG}.onnx", labelled_seg)
    assert scored.drop == pytest.approx(100 * control["drop"], abs=1e-6)


@pytest.mark.parametrize(("extra", "needle"), [
    (("--max-drop", "1"), "add --data DIR"),
    (("--data", "{data}"), "--data is the labelled data --max-drop scores"),
    (("--max-drop", "1", "--data", "{data}", "--min-agreement", "0.9"), "not both"),
    (("--max-drop", "1", "--data", "{data}", "--precision", "fp16"), "--max-drop controls int8"),
    (("--max-drop", "1", "--data", "{missing}"), "no such folder"),
    (("--max-drop", "1", "--data", "{data}", "--data-format", "imagefolder"), "imagefolder is a classification"),
    (("--max-drop", "-1", "--data", "{data}"), "max_drop"),
    (("--max-drop", "1", "--data", "{data}", "--batch", "2"), "--batch 1"),
])
@pytest.mark.parametrize("target", TARGETS)
def test_bad_max_drop_options_exit_2_before_writing(cli, tmp_path, seg_weights, calib_photos, labelled_seg, target,
                                                    extra, needle):
    args = [str(a).format(data=labelled_seg, missing=tmp_path / "nowhere") for a in extra]
    result = export_int8(cli, tmp_path / "out", calib_photos, seg_weights, target, *args)
    assert result.code == 2, result
    assert len(result.error_lines) == 1 and needle in result.error_lines[0], result
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


flag_values = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(str), st.integers(-5, 500).map(str),
                        st.text(max_size=12))


@fast(FAST_CLI)
@given(drop=flag_values, limit=flag_values, data_format=st.sampled_from(["", "masks", "imagefolder", "cityscapes", "x"]))
@example(drop="nan", limit="1", data_format="")
@example(drop="1", limit="0", data_format="masks")
@example(drop="101", limit="1", data_format="")
def test_max_drop_flags_are_accepted_or_refused_in_one_line_before_writing(cli, tmp_path_factory, seg_weights,
                                                                            calib_photos, labelled_seg, drop, limit,
                                                                            data_format):
    """Any --max-drop / --data-limit / --data-format text on an fp16 export (which --max-drop cannot
    control): always exit 2 in one line, never a traceback or a folder."""
    out = tmp_path_factory.mktemp("prop") / "out"
    fmt = ("--data-format", data_format) if data_format else ()
    result = cli("export", SEG, "--target", "tflite", "--precision", "fp16", "--weights", seg_weights,
                 "--resolution", "x".join(map(str, RESOLUTION)), "--out", out, "--max-drop", drop, "--data",
                 labelled_seg, "--data-limit", limit, *fmt)
    assert result.code == 2 and len(result.error_lines) == 1, result
    assert not out.exists()
