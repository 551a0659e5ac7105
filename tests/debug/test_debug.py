"""``evit debug`` on every target that runs here: a damaged layer is named, a healthy fp16 artifact passes."""
from __future__ import annotations

import json

import pytest

from .conftest import (
    DAMAGED,
    DAMAGED_TFLITE_SCOPE,
    FACTOR,
    copy_artifact,
    damage_coreml,
    damage_onnx,
    damage_tflite,
)

DAMAGE = {
    "onnx": lambda artifact: damage_onnx(artifact, DAMAGED, FACTOR),
    "trt": lambda artifact: damage_onnx(artifact, DAMAGED, FACTOR),
    "tflite": lambda artifact: damage_tflite(artifact, DAMAGED_TFLITE_SCOPE, FACTOR),
    "coreml": lambda artifact: damage_coreml(artifact, DAMAGED, FACTOR),
}


@pytest.mark.parametrize(("target", "precision"), [("onnx", "fp32"), ("onnx", "fp16"), ("trt", "fp16"),
                                                  ("tflite", "fp32"), ("tflite", "int8"), ("coreml", "fp32"),
                                                  ("coreml", "fp16")])
def test_a_damaged_conv_is_the_first_divergent_layer(cli, export_seg, tmp_path, target, precision):
    """trt: the typed ONNX on ONNX Runtime, fp16 emulated as verify runs it; tflite: LiteRT's
    interpreter with every tensor kept; coreml: evit's MIL interpreter."""
    artifact = copy_artifact(export_seg(target, precision), tmp_path)
    DAMAGE[target](artifact)
    result = cli("debug", artifact, "--samples", 1, "--json", tmp_path / "d.json", "--plot", tmp_path / "d.png")
    assert result.code == 1, result
    assert len(result.error_lines) == 1 and DAMAGED in result.error_lines[0], result
    report = json.loads((tmp_path / "d.json").read_text())
    assert report["first_divergent"] == DAMAGED
    layers = {layer["module"]: layer for layer in report["layers"]}
    damaged = layers[DAMAGED]
    assert damaged["rel_l2"] > 0.1 and damaged["added"]["rel_l2"] > 0.1
    # run alone on the reference's inputs, the layers after it add no more than before it:
    # the added error names the culprit even where the carried error has spread downstream
    assert report["top_added"][0]["module"] == DAMAGED
    assert any(layer["order"] > damaged["order"] for layer in report["layers"])
    assert (tmp_path / "d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_healthy_fp16_artifact_has_no_layer_over_the_threshold(cli, export_seg, tmp_path, test_photos):
    result = cli("debug", export_seg("onnx", "fp16"), "--images", test_photos, "--samples", 2, "--json", "-")
    assert result.code == 0, result
    report = json.loads(result.stdout)
    assert report["first_divergent"] is None and report["over_threshold"] == 0
    assert report["threshold"] == 2e-2 and report["samples"] == 2
    assert len(report["layers"]) > 80
    worst = max(layer["rel_l2"] for layer in report["layers"])
    assert 1e-5 < worst < report["threshold"]  # fp16 rounding is visible, and small
    assert all(layer["added"] is not None for layer in report["layers"])  # every layer ran alone
    assert report["deployed_output"]["rel_l2"] < report["threshold"]


def test_an_onnx_int8_artifact_is_compared_at_the_scale_of_each_module(cli, export_seg, test_photos):
    """ORT int8 folds each HardSwish's 1/6 into the convolutions that read it, so the tensor the
    map names holds six times the module's output. Read as it is, every such layer was 5.0 off
    (relative L2) on a healthy artifact; at its module's scale it is int8's rounding."""
    artifact = export_seg("onnx", "int8")
    manifest = json.loads(artifact.with_name(artifact.stem + ".evit.json").read_text())
    scales = manifest["details"]["layer_map"]["scales"]
    assert scales and set(scales.values()) == {6.0}
    result = cli("debug", artifact, "--images", test_photos, "--samples", 1, "--json", "-")
    report = json.loads(result.stdout)
    scaled = [layer for layer in report["layers"] if layer["tensor"] in scales]
    assert len(scaled) >= 10
    assert all(layer["rel_l2"] < 0.3 and layer["added"]["rel_l2"] < 0.3 for layer in scaled), scaled
    assert result.code == 0 and report["over_threshold"] == 0, result


def test_layers_all_adds_torch_building_blocks(export_seg):
    from evit_deploy.debug.engine import debug_artifact

    artifact = export_seg("onnx")
    auto = debug_artifact(artifact, samples=1, alone=False)
    every = debug_artifact(artifact, samples=1, layers="all", alone=False)
    modules = {layer.module for layer in every.layers}
    assert {layer.module for layer in auto.layers} < modules
    assert f"{DAMAGED}.act" in modules and f"{DAMAGED}.act" not in {layer.module for layer in auto.layers}
    assert all(layer.errors.rel_l2 < 1e-4 for layer in every.layers)  # fp32 ORT vs eager torch


def test_tflite_layouts_are_read_from_the_graph_not_guessed_from_shapes(tmp_path, seeded_checkpoint):
    """cls-B0 at 64x64 has 16x16x16 tensors, which read alike in NCHW and NHWC: a healthy fp32
    artifact must still agree with PyTorch at every layer, run whole and layer by layer."""
    from evit_deploy import api
    from evit_deploy.debug import debug_artifact

    weights = seeded_checkpoint("efficientvit_cls_b0")
    artifact = api.export("efficientvit-b0-r224", target="tflite", weights=weights, out=tmp_path,
                          resolution=(64, 64)).artifact
    report = debug_artifact(artifact, samples=1)
    assert any(layer.errors.elements == 16 ** 3 for layer in report.layers)  # the ambiguous shape is there
    assert report.first_divergent is None, report.first_divergent
    assert all(layer.added is not None and layer.added < 1e-4 for layer in report.layers)
