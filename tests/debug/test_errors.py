"""Every way ``evit debug`` refuses its input: one line, exit 2, nothing written."""
from __future__ import annotations

import json

from .conftest import copy_artifact


def _refused(result, *needles: str) -> None:
    assert result.code == 2, result
    assert len(result.error_lines) == 1 and "Traceback" not in result.stderr, result
    for needle in needles:
        assert needle in result.error_lines[0], result


def test_an_artifact_without_a_manifest(cli, export_seg, tmp_path):
    artifact = copy_artifact(export_seg("onnx"), tmp_path)
    artifact.with_name("efficientvit-seg-b0-cityscapes.evit.json").unlink()
    _refused(cli("debug", artifact), "no manifest", "re-export")


def test_a_manifest_from_before_layer_maps_says_re_export(cli, export_seg, tmp_path):
    artifact = copy_artifact(export_seg("onnx"), tmp_path)
    path = artifact.with_name("efficientvit-seg-b0-cityscapes.evit.json")
    manifest = json.loads(path.read_text())
    del manifest["details"]["layer_map"]
    path.write_text(json.dumps(manifest))
    _refused(cli("debug", artifact), "no layer map", "re-export")


def test_an_unknown_layers_value(cli, export_seg, tmp_path):
    _refused(cli("debug", export_seg("onnx"), "--layers", "some", "--json", tmp_path / "d.json"),
             "--layers 'some'", "auto, all")
    assert not (tmp_path / "d.json").exists()


def test_bad_numbers_and_paths(cli, export_seg, tmp_path):
    artifact = export_seg("onnx")
    _refused(cli("debug", artifact, "--threshold", "0"), "--threshold")
    _refused(cli("debug", artifact, "--samples", "0"), "--samples")
    _refused(cli("debug", artifact, "--plot", tmp_path / "d.svg"), ".png")
    _refused(cli("debug", artifact, "--json", tmp_path / "no" / "d.json"), "does not exist")
    _refused(cli("debug", artifact, "--images", tmp_path / "missing"), "no such folder")
    _refused(cli("debug", tmp_path / "none.onnx"), "no such artifact")
    assert list(tmp_path.iterdir()) == []
