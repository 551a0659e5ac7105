"""``evit eval`` on Cityscapes, ADE20K and masks layouts made by the tests (seg-B0 / seg-B1, seeded weights).

Must show (issue 17): the PyTorch reference's mIoU equals an independent computation (the official
script's steps in torch + its ``SegIOU`` histograms) to 1e-6; the ONNX fp32 artifact's equals the
reference's to 1e-4; an int8 artifact (TensorRT plan-only Q/DQ ONNX, run by ONNX Runtime) reports a
drop, and ``--max-drop`` turns it into exit 1.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evit_deploy.evaluation import evaluate

from . import official
from .conftest import ADE, ADE_RES, SEG, SEG_RES


def _cityscapes_pairs(root: Path) -> list[tuple[Path, np.ndarray]]:
    pairs = []
    for image in sorted((root / "leftImg8bit" / "val").glob("*/*_leftImg8bit.png")):
        name = image.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
        label_ids = np.array(Image.open(root / "gtFine" / "val" / image.parent.name / name))
        pairs.append((image, official.CITYSCAPES_LABEL_MAP[label_ids]))
    return pairs


def _independent_miou(model_name: str, weights: Path, pairs: list[tuple[Path, np.ndarray]], classes: int,
                      size: tuple[int, int] | None) -> tuple[float, float]:
    """(mIoU, pixel accuracy) %, with the official steps; ``size`` None: ADE20K's per-image protocol."""
    from evit_deploy import zoo

    model = zoo.create_model(model_name, weights)
    iou = official.SegIoU(classes)
    correct = labelled = 0
    for image, labels in pairs:
        height, width = np.array(Image.open(image)).shape[:2]
        prediction = official.seg_prediction(model, image, size or official.ade20k_input_size(height, width),
                                             labels.shape)
        iou.update(prediction, labels)
        valid = labels != -1
        correct += int((prediction[valid] == labels[valid]).sum())
        labelled += int(valid.sum())
    return iou.miou(), 100.0 * correct / labelled


@pytest.fixture(scope="module")
def cityscapes_fp32(seg_fp32, cityscapes):
    return evaluate(seg_fp32, cityscapes)


def test_cityscapes_reference_equals_an_independent_computation(cityscapes_fp32, cityscapes, seg_weights):
    result = cityscapes_fp32
    assert result.format == "cityscapes" and result.images == 6  # detected from the folder
    miou, accuracy = _independent_miou(SEG, seg_weights, _cityscapes_pairs(cityscapes), 19, SEG_RES)
    assert result.reference is not None
    assert result.reference.metrics["miou"] == pytest.approx(miou, abs=1e-6)
    assert result.reference.metrics["pixel_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert 50 < miou < 100  # labels are the reference's predictions with shapes drawn over them


def test_cityscapes_onnx_fp32_equals_the_reference(cityscapes_fp32):
    result = cityscapes_fp32
    assert result.artifact is not None and result.reference is not None
    assert result.artifact.metrics["miou"] == pytest.approx(result.reference.metrics["miou"], abs=1e-4)
    assert abs(result.drop) <= 1e-4
    assert result.runner["backend"] == "onnxruntime" and result.reference_info["backend"] == "torch"


def test_cityscapes_ignored_ids_are_not_scored(cityscapes_fp32, cityscapes):
    """Ego vehicle (1) and parking (9) drawn over the labels are ignored; the car ellipse (26) is class 13."""
    pairs = _cityscapes_pairs(cityscapes)
    labelled = sum(int((labels != -1).sum()) for _, labels in pairs)
    assert cityscapes_fp32.reference.confusion.sum() == labelled
    assert labelled < sum(labels.size for _, labels in pairs) * 0.9
    assert cityscapes_fp32.reference.support[13] == sum(int((labels == 13).sum()) for _, labels in pairs) > 0


def test_cityscapes_protocol_difference_is_said(cityscapes_fp32):
    """seg-B0 exported at 64x128, labels 128x256: fed at the artifact's size, not the paper's 1024x2048."""
    protocol = cityscapes_fp32.protocol
    assert protocol["matches_paper"] is False and protocol["images_off_protocol"] == 6
    assert "1024x2048" in protocol["paper"] and "64x128" in protocol["input"]
    assert any(n.startswith("protocol differs from the paper's: 6 of 6 image(s) were fed at 64x128 (the artifact's "
                            "fixed input)") for n in cityscapes_fp32.notes)


def test_cityscapes_cli_table_json_per_class_and_confusion(cli, seg_fp32, cityscapes, tmp_path):
    result = cli("eval", seg_fp32, "--data", cityscapes, "--format", "cityscapes", "--per-class",
                 "--json", tmp_path / "e.json", "--confusion", tmp_path / "c.png", "--max-drop", "0.01")
    assert result.code == 0, result
    assert "mIoU" in result.stdout and "Δ artifact − PyTorch" in result.stdout and "traffic light" in result.stdout
    assert "protocol differs from the paper's" in result.stdout
    data = json.loads((tmp_path / "e.json").read_text())
    assert data["headline"] == "miou" and data["images"] == 6 and data["format"] == "cityscapes"
    assert data["classes"][:3] == ["road", "sidewalk", "building"] and len(data["artifact"]["per_class"]) == 19
    assert data["artifact"]["support"] == data["reference"]["support"] and sum(data["reference"]["support"]) > 0
    assert abs(data["difference"]["miou"]) <= 1e-4 and data["published"] == pytest.approx(75.653)
    with Image.open(tmp_path / "c.png") as png:
        assert png.format == "PNG" and png.width > 400
    assert not list(tmp_path.glob(".*"))  # no temporary file left beside the outputs


def test_cityscapes_int8_reports_a_drop_and_max_drop_fails_it(cli, seg_int8, cityscapes, tmp_path):
    result = cli("eval", seg_int8, "--data", cityscapes, "--max-drop", "0", "--json", tmp_path / "e.json")
    data = json.loads((tmp_path / "e.json").read_text())  # written before the verdict
    drop = data["drop"]
    assert drop > 0 and data["difference"]["miou"] == pytest.approx(-drop)
    assert data["precision"] == "int8" and data["runner"]["backend"] == "onnxruntime"
    assert result.code == 1, result
    ref, art = data["reference"]["metrics"]["miou"], data["artifact"]["metrics"]["miou"]
    assert result.error_lines == [(f"error: mIoU dropped {drop:.2f} points (PyTorch {ref:.2f} -> "
                                  f"{seg_int8.name} {art:.2f}), more than --max-drop 0")]
    assert len(result.stderr.strip().splitlines()) == 1
    passing = cli("eval", seg_int8, "--data", cityscapes, "--max-drop", f"{drop + 0.5:.2f}", "--quiet")
    assert passing.code == 0, passing
    assert passing.stdout.startswith(f"mIoU {art:.2f} (drop {drop:+.2f})")


def test_masks_layout_with_its_own_classes_and_ignore_index(cityscapes_fp32, seg_fp32, masks):
    """The Cityscapes set rewritten as train ids with ignore index 250 scores exactly the same."""
    result = evaluate(seg_fp32, masks)
    assert result.format == "masks" and result.classes[0] == "class 0"
    assert result.reference.metrics == cityscapes_fp32.reference.metrics
    assert result.artifact.metrics == cityscapes_fp32.artifact.metrics
    assert np.array_equal(result.reference.confusion, cityscapes_fp32.reference.confusion)


def test_a_model_name_evaluates_pytorch_alone(cityscapes_fp32, cityscapes, seg_weights):
    """The same inputs (--resolution 64x128) give the artifact run's reference figures, without an artifact."""
    result = evaluate(SEG, cityscapes, weights=seg_weights, resolution=SEG_RES)
    assert result.artifact is None and result.target == "torch" and result.drop is None
    assert result.reference.metrics == cityscapes_fp32.reference.metrics
    assert any("(--resolution)" in n for n in result.notes)


def test_limit_takes_the_first_images(seg_fp32, cityscapes):
    result = evaluate(seg_fp32, cityscapes, limit=2, reference=False)
    assert result.images == 2 and result.reference is None and result.artifact is not None


def _ade_pairs(root: Path) -> list[tuple[Path, np.ndarray]]:
    images = sorted((root / "images" / "validation").glob("*.jpg"))
    return [(image, np.array(Image.open(root / "annotations" / "validation" / f"{image.stem}.png")).astype(np.int64)
             - 1) for image in images]


@pytest.mark.slow
def test_ade20k_reference_fp32_and_int8(cli, ade_fp32, ade_int8, ade20k, ade_weights, tmp_path):
    """Label shift (value v is class v - 1, 0 ignored): reference = independent to 1e-6, fp32 to 1e-4,
    int8 drops and --max-drop fails it."""
    result = evaluate(ade_fp32, ade20k)
    assert result.format == "ade20k" and result.images == 12 and len(result.classes) == 150
    miou, accuracy = _independent_miou(ADE, ade_weights, _ade_pairs(ade20k), 150, ADE_RES)
    assert result.reference.metrics["miou"] == pytest.approx(miou, abs=1e-6)
    assert result.reference.metrics["pixel_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert result.artifact.metrics["miou"] == pytest.approx(miou, abs=1e-4)
    assert result.reference.support[12] > 0  # the person ellipse, drawn as value 13
    failed = cli("eval", ade_int8, "--data", ade20k, "--max-drop", "0", "--json", tmp_path / "e.json")
    data = json.loads((tmp_path / "e.json").read_text())
    assert data["drop"] > 0 and failed.code == 1, failed
    assert failed.error_lines[0].startswith(f"error: mIoU dropped {data['drop']:.2f} points")


@pytest.mark.slow
def test_ade20k_model_name_follows_the_paper_protocol(ade20k, ade_weights):
    """No fixed input: short side 512, long side to a multiple of 32 (128x192 images -> 512x768)."""
    result = evaluate(ADE, ade20k, weights=ade_weights, limit=3)
    assert result.protocol["matches_paper"] is True and not any("protocol differs" in n for n in result.notes)
    miou, _ = _independent_miou(ADE, ade_weights, _ade_pairs(ade20k)[:3], 150, None)
    assert result.reference.metrics["miou"] == pytest.approx(miou, abs=1e-6)
