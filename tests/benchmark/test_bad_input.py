"""Every bad input of `evit benchmark` and `evit benchmark merge`: one line on stderr, exit 2, nothing created.

The result folders the merge cases need come from runs whose only row is skipped (int8 without --calib),
which write a real ``benchmark.json`` in a second: nothing is exported for them.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SEG = "efficientvit-seg-b0-cityscapes"


def _one_line(result, message: str) -> None:
    assert result.code == 2, result
    assert len(result.error_lines) == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.error_lines[0], result.error_lines
    assert "Traceback" not in result.stderr


def _images(folder: Path, count: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(np.full((32, 64, 3), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _cityscapes_without_labels(root: Path) -> Path:
    _images(root / "leftImg8bit" / "val" / "ulm")
    (root / "leftImg8bit" / "val" / "ulm" / "0.png").rename(root / "leftImg8bit/val/ulm/ulm_0_0_leftImg8bit.png")
    (root / "gtFine" / "val" / "ulm").mkdir(parents=True)
    return root


CASES = {
    "shard_beyond_n": (["--shard", "3/2"], "--shard 3/2: I must be from 1 to N (here 1 to 2)"),
    "shard_zero_of_zero": (["--shard", "0/0"], "--shard 0/0: N, the number of slices, must be at least 1"),
    "shard_not_i_of_n": (["--shard", "half"], "--shard takes I/N, the I-th of N slices (e.g. 1/4), got 'half'"),
    "unknown_target": (["--targets", "onnx,tensorflow"], "unknown target 'tensorflow'; choose one of"),
    "unknown_precision": (["--precisions", "fp16,fp8"], "--precisions: 'fp8' is not one of fp32, fp16, int8"),
    "no_supported_precision": (["--targets", "coreml", "--precisions", "int8"],
                               "no target supports the precisions asked for (int8): coreml int8"),
    "resolution": (["--resolution", "64x128,64x100"], "resolution 64x100 is not a multiple of 32"),
    "device_twice": (["--device", "cpu,cpu"], "--device cpu,cpu: a device is named twice"),
    "unknown_device": (["--device", "cpu,orin"], "unknown device 'orin': not a local device"),
    "max_drop_without_data": (["--max-drop", "1"], "--max-drop bounds the accuracy drop measured on --data"),
    "format_without_data": (["--format", "cityscapes"], "--format, --limit and --classes describe --data"),
    "negative_max_drop": (["--max-drop", "-1"], "--max-drop must be at least 0"),
    "iters_zero": (["--iters", "0"], "--iters must be at least 1 (got '0')"),
    "calib_missing": (["--calib", "nope"], "nope: no such folder; pass a folder of images"),
    "data_missing": (["--data", "nope"], "nope: no such folder; pass --data with a labelled dataset"),
    "unknown_model": (["MODEL=efficientvit-b9"], "unknown model 'efficientvit-b9'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_exit_2(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    args, message = CASES[case]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EVIT_DEVICES", str(tmp_path / "devices.yaml"))
    (tmp_path / "devices.yaml").write_text("devices: {}\n")
    model = next((a.split("=", 1)[1] for a in args if a.startswith("MODEL=")), SEG)
    args = [a for a in args if not a.startswith("MODEL=")]
    _one_line(cli("benchmark", model, *args, "--out", tmp_path / "out"), message)
    assert not (tmp_path / "out").exists()


def test_data_not_in_its_layout_names_the_missing_file(cli, tmp_path: Path) -> None:
    data = _cityscapes_without_labels(tmp_path / "data")
    result = cli("benchmark", SEG, "--data", data, "--out", tmp_path / "out")
    _one_line(result, "gtFine/val/ulm/ulm_0_0_gtFine_labelIds.png is missing")
    assert not (tmp_path / "out").exists()


def test_more_calibration_samples_than_images(cli, tmp_path: Path) -> None:
    calib = _images(tmp_path / "calib", 2)
    _one_line(cli("benchmark", SEG, "--calib", calib, "--calib-samples", 3, "--out", tmp_path / "out"),
              f"--calib-samples 3, but {calib} holds 2 image(s)")
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file(cli, tmp_path: Path) -> None:
    (tmp_path / "out").write_text("")
    _one_line(cli("benchmark", SEG, "--out", tmp_path / "out"),
              f"--out {tmp_path / 'out'}: a file, not a folder")


# ------------------------------------------------------------------------------------------ merge


@pytest.fixture
def skipped_run(cli, tmp_path: Path):
    """``skipped_run(name, *args)`` -> the --out folder of a benchmark whose one cell (tflite int8) is skipped."""

    def run(name: str, *args: object, model: str = SEG) -> Path:
        out = tmp_path / name
        result = cli("benchmark", model, "--targets", "tflite", "--precisions", "int8", "--resolution", "64x128",
                     "--out", out, *args)
        assert result.code == 0, result
        return out

    return run


def test_a_cell_this_machine_cannot_run_is_a_skipped_row_with_the_reason(skipped_run) -> None:
    data = json.loads((skipped_run("one") / "benchmark.json").read_text())
    (row,) = data["rows"]
    assert row["status"] == "skipped" and row["reason"] == "int8 calibrates on images: give --calib with a folder of them"
    assert data["counts"]["skipped"] == 1 and row["artifact"] is None


def test_merging_shards_of_different_models_is_refused(cli, skipped_run, tmp_path: Path) -> None:
    seg, cls = skipped_run("seg"), skipped_run("cls", model="efficientvit-b1-r224")
    _one_line(cli("benchmark", "merge", seg, cls, "--out", tmp_path / "m"),
              f"cannot merge {cls} with {seg}: they benchmark different models (efficientvit-b1-r224 vs {SEG})")
    assert not (tmp_path / "m").exists()


def test_merging_shards_of_different_configurations_is_refused(cli, skipped_run, tmp_path: Path) -> None:
    a, b = skipped_run("a", "--iters", 3), skipped_run("b", "--iters", 5, "--seed", 1)
    _one_line(cli("benchmark", "merge", a, b, "--out", tmp_path / "m"),
              f"cannot merge {b} with {a}: different configurations: profile (iters 3 vs 5); verify (seed 0 vs 1); "
              "weights (seed 0 vs 1)")
    assert not (tmp_path / "m").exists()


def test_a_shard_twice_or_a_shard_missing_is_refused(cli, skipped_run, tmp_path: Path) -> None:
    first = skipped_run("first", "--shard", "1/2")
    shutil.copytree(first, tmp_path / "again")
    _one_line(cli("benchmark", "merge", first, tmp_path / "again", "--out", tmp_path / "m"),
              f"row tflite/int8/64x128/cpu is in both {first} and {tmp_path / 'again'}")
    _one_line(cli("benchmark", "merge", first, "--out", tmp_path / "m"),
              "shard(s) 2/2 missing: merge every shard of the run")
    assert not (tmp_path / "m").exists()
    second = skipped_run("second", "--shard", "2/2")  # the one-cell matrix's second slice is empty
    merged = cli("benchmark", "merge", first, second, "--out", tmp_path / "m")
    assert merged.code == 0, merged
    assert [r["key"] for r in json.loads((tmp_path / "m" / "benchmark.json").read_text())["rows"]] == [
        "tflite/int8/64x128/cpu"]


def test_merge_inputs_that_are_not_results(cli, skipped_run, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _one_line(cli("benchmark", "merge", tmp_path / "empty", "--out", tmp_path / "m"),
              f"{tmp_path / 'empty'}: no benchmark.json there; give the --out folders of `evit benchmark` runs")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "benchmark.json").write_text("{")
    _one_line(cli("benchmark", "merge", tmp_path / "broken", "--out", tmp_path / "m"),
              f"{tmp_path / 'broken' / 'benchmark.json'}: not a benchmark result evit can read")
    run = skipped_run("run")
    _one_line(cli("benchmark", "merge", run, "--out", run), f"--out {run} is one of the folders being merged")
    assert not (tmp_path / "m").exists()
