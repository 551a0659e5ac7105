"""``evit eval`` on an ImageFolder made by the tests (cls-B1 at 128x128, seeded weights): top-1/top-5.

Slow: two cls-B1 exports (fp32 ONNX, int8 Q/DQ) and 24 reference inferences to label the photos.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from evit_deploy.evaluation import evaluate

from . import official
from .conftest import CLS, CLS_RES

pytestmark = pytest.mark.slow


def _independent(weights: Path, root: Path) -> tuple[float, float]:
    """top-1/top-5 % with torchvision's steps and the official ``accuracy(topk=(1, 5))``."""
    from evit_deploy import zoo

    card = zoo.get_card(CLS)
    model = zoo.create_model(CLS, weights)
    logits, labels = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for image in sorted(folder.glob("*.png")):
            logits.append(official.cls_logits(model, image, CLS_RES, card.preprocessing.crop_ratio))
            labels.append(card.classes.index(folder.name))
    return official.topk(logits, labels, 1), official.topk(logits, labels, 5)


@pytest.fixture(scope="module")
def cls_result(cls_fp32, imagefolder):
    return evaluate(cls_fp32, imagefolder)


def test_reference_equals_an_independent_computation(cls_result, cls_weights, imagefolder):
    result = cls_result
    assert result.format == "imagefolder" and result.images == 24 and result.headline == "top1"
    top1, top5 = _independent(cls_weights, imagefolder)
    assert result.reference.metrics["top1"] == pytest.approx(top1, abs=1e-6)
    assert result.reference.metrics["top5"] == pytest.approx(top5, abs=1e-6)
    assert 50 < top1 < 100  # two thirds of the photos sit in the reference's top-1 folder


def test_onnx_fp32_equals_the_reference(cls_result):
    assert cls_result.artifact.metrics["top1"] == pytest.approx(cls_result.reference.metrics["top1"], abs=1e-4)
    assert cls_result.artifact.metrics["top5"] == pytest.approx(cls_result.reference.metrics["top5"], abs=1e-4)
    assert "224x224" in cls_result.protocol["paper"] and "128x128" in cls_result.protocol["input"]
    assert any("protocol differs from the paper's" in n for n in cls_result.notes)


def test_int8_reports_a_drop_and_max_drop_fails_it(cli, cls_int8, imagefolder, tmp_path):
    failed = cli("eval", cls_int8, "--data", imagefolder, "--max-drop", "0", "--json", tmp_path / "e.json",
                 "--per-class")
    data = json.loads((tmp_path / "e.json").read_text())
    assert data["drop"] > 0 and data["difference"]["top1"] == pytest.approx(-data["drop"]), data["difference"]
    assert failed.code == 1, failed
    assert failed.error_lines == [
        (f"error: top-1 dropped {data['drop']:.2f} points (PyTorch {data['reference']['metrics']['top1']:.2f} -> "
        f"{cls_int8.name} {data['artifact']['metrics']['top1']:.2f}), more than --max-drop 0")]
    assert "accuracy %" in failed.stdout and "labelled images" in failed.stdout  # the per-class table


def test_an_index_file_maps_folder_names(cls_result, cls_fp32, imagefolder, tmp_path):
    """Folders renamed to synset-like ids, mapped back by a Keras-style index file: the same figures."""
    from evit_deploy import zoo

    classes = zoo.get_card(CLS).classes
    renamed = tmp_path / "synsets"
    index = {}
    for n, folder in enumerate(sorted(p for p in imagefolder.iterdir() if p.is_dir())):
        wnid = f"n{n:08d}"
        (renamed / wnid).mkdir(parents=True)
        for image in folder.iterdir():
            (renamed / wnid / image.name).write_bytes(image.read_bytes())
        index[str(classes.index(folder.name))] = [wnid, folder.name]
    (tmp_path / "index.json").write_text(json.dumps(index))
    result = evaluate(cls_fp32, renamed, classes=tmp_path / "index.json", reference=False)
    assert result.artifact.metrics == cls_result.artifact.metrics
