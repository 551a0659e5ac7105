"""Issue 14, the items in request validation and artifact opening: each reproduced as the issue
reported it, now one line with the right exit code, nothing written where nothing should be."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from evit_deploy import api
from evit_deploy.errors import UsageError
from evit_deploy.manifest import manifest_path_for

CLS = "efficientvit-b0-r224"
SEG = "efficientvit-seg-b0-cityscapes"


@pytest.fixture(scope="module")
def cls_onnx(tmp_path_factory) -> Path:
    return api.export(CLS, target="onnx", resolution="64x64", out=tmp_path_factory.mktemp("cls")).artifact


def _edit(artifact: Path, change) -> None:
    path = manifest_path_for(artifact)
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_item5_a_resolution_that_cannot_fit_is_refused_before_anything(cli, tmp_path: Path) -> None:
    result = cli("export", SEG, "--resolution", "100000x100000", "--out", tmp_path / "out")
    assert result.code == 2, result
    (line,) = result.error_lines
    assert "at 1x3x100000x100000 needs about" in line and "choose a smaller --resolution" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["a/b", "../../escaped", "", "-x"])
def test_item7_a_name_that_is_not_a_stem(cli, tmp_path: Path, name: str) -> None:
    result = cli("export", CLS, "--name", name, "--out", tmp_path / "out")
    assert result.code == 2 and "is not a file stem" in result.error_lines[0], result
    assert not (tmp_path / "out").exists() and not (tmp_path / "escaped").exists()


@pytest.mark.parametrize(("edit", "says"), [
    (lambda d: d.update(model="efficientvit-seg-b0-cityscapes"), "is a segmentation model, the manifest says task"),
    (lambda d: d.update(task="segmentation", model="efficientvit-seg-b0-cityscapes"),
     "task says segmentation, the artifact was exported for classification"),
    (lambda d: d["input"].update(height=96), "input says 1x3x96x64"),
    (lambda d: d.update(precision="fp16"), "precision says fp16, the artifact is fp32"),
])
def test_item9_a_manifest_that_contradicts_its_artifact(cli, cls_onnx: Path, tmp_path: Path, edit, says) -> None:
    copy = tmp_path / cls_onnx.name
    copy.write_bytes(cls_onnx.read_bytes())
    manifest_path_for(copy).write_text(manifest_path_for(cls_onnx).read_text())
    _edit(copy, edit)
    for command in ("verify", "profile"):
        result = cli(command, copy)
        assert result.code == 2, result
        (line,) = result.error_lines
        assert f"{manifest_path_for(copy).name} contradicts {copy.name}: " in line and says in line, line
        assert "re-export" in line


@pytest.mark.parametrize("opset", ["3", "99"])
def test_item10_an_opset_out_of_range_and_what_is_recorded(cli, tmp_path: Path, opset: str) -> None:
    result = cli("export", CLS, "--resolution", "64x64", "--out", tmp_path / "out", "--opset", opset)
    assert result.code == 2, result
    assert f"opset {opset} is out of range: the dynamo exporter writes opsets 18 to 23" in result.error_lines[0]
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
    made = api.export(CLS, target="onnx", resolution="64x64", out=tmp_path / "ok", options={"opset": "20"})
    assert made.manifest.recipe.options["opset"] == 20 and made.manifest.details["opset"] == 20


def test_item11_a_negative_tolerance_is_usage_and_writes_nothing(cli, cls_onnx: Path) -> None:
    before = manifest_path_for(cls_onnx).read_bytes()
    result = cli("verify", cls_onnx, "--atol", "-1")
    assert result.code == 2 and "--atol must be at least 0" in result.error_lines[0], result
    assert manifest_path_for(cls_onnx).read_bytes() == before


def test_item15_threads_zero_negative_and_more_than_cores(cli, cls_onnx: Path) -> None:
    for threads in ("0", "-4"):
        result = cli("profile", cls_onnx, "--threads", threads)
        assert result.code == 2 and "--threads must be at least 1" in result.error_lines[0], result
    many = str((os.cpu_count() or 1) + 1)
    result = cli("profile", cls_onnx, "--threads", many, "--warmup", "0", "--iters", "1", "-q")
    assert result.code == 0, result
    assert f"--threads {many} is more than the" in result.stderr


def test_item17_fp32_does_not_need_a_full_calibration_set(tmp_path: Path, photo_folder) -> None:
    few = photo_folder(("astronaut", "coffee", "rocket", "chelsea"))
    result = api.export(CLS, target="onnx", resolution="64x64", calib=few, out=tmp_path)
    assert result.artifact.is_file()
    with pytest.raises(UsageError, match="4 image\\(s\\) but 64 are needed"):
        api.export(CLS, target="tflite", precision="int8", resolution="64x64", calib=few, out=tmp_path / "i8")


def test_item19_a_folder_given_as_weights(cli, tmp_path: Path) -> None:
    result = cli("export", CLS, "--weights", tmp_path, "--out", tmp_path / "out")
    assert result.code == 2 and "a folder, not a weights file" in result.error_lines[0], result


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the check needs a normal user")
def test_item20_a_read_only_folder_verifies_and_says_it_did_not_record(cls_onnx: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    for source in (cls_onnx, manifest_path_for(cls_onnx)):
        (folder / source.name).write_bytes(source.read_bytes())
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        report = api.verify(folder / cls_onnx.name, samples=1)
    finally:
        folder.chmod(stat.S_IRWXU)
    assert report.passed
    assert any(n.startswith("the result is not recorded in the manifest: cannot write") for n in report.notes)


def test_item20_record_failure_is_reported(cls_onnx: Path, tmp_path: Path, monkeypatch) -> None:
    """As root (CI), a read-only folder is still writable: make the write itself fail."""
    from evit_deploy.pipeline import verify as verify_module

    def refuse(path: Path, data: dict) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(verify_module, "write_json_atomic", refuse)
    report = api.verify(cls_onnx, samples=1)
    assert report.passed
    assert "the result is not recorded in the manifest: cannot write" in report.notes[-1]
    assert "Permission denied" in report.notes[-1]


def test_item21_a_corrupt_calibration_image_leaves_no_folder(cli, tmp_path: Path, photo_folder) -> None:
    calib = tmp_path / "calib"
    calib.mkdir()
    for image in sorted(photo_folder(("astronaut", "coffee")).iterdir()):
        (calib / image.name).write_bytes(image.read_bytes())
    (calib / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "deep" / "out"
    result = cli("export", CLS, "--target", "tflite", "--precision", "int8", "--resolution", "64x64",
                 "--calib", calib, "--calib-samples", "3", "--out", out)
    assert result.code == 2, result
    assert "broken.jpg" in result.error_lines[0]
    assert not (tmp_path / "deep").exists()
