"""The confusion-matrix PNG: written atomically, readable at ImageNet scale (the most frequent 40 classes)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evit_deploy.errors import UsageError
from evit_deploy.evaluation.evaluate import EvalResult
from evit_deploy.evaluation.plots import shown_classes, write_confusion_png
from evit_deploy.labelled.metrics import segmentation_scores


def _result(confusion: np.ndarray) -> EvalResult:
    scores = segmentation_scores(confusion)
    return EvalResult(model="m", task="segmentation", source="a.onnx", target="onnx", precision="fp32", data="d",
                      format="masks", classes=[f"c{i}" for i in range(len(confusion))], images=1, protocol={},
                      reference=scores, artifact=scores)


def test_only_classes_that_occur_are_shown_and_at_most_forty() -> None:
    confusion = np.zeros((60, 60), dtype=np.int64)
    confusion[3, 3] = 5
    assert shown_classes(confusion) == [3]
    confusion[np.arange(50), np.arange(50)] = np.arange(1, 51)
    assert shown_classes(confusion) == list(range(10, 50))  # the 40 most frequent, in class order


def test_png_is_written_in_place_without_leftovers(tmp_path: Path) -> None:
    confusion = np.random.default_rng(0).integers(0, 50, (5, 5))
    write_confusion_png(_result(confusion), tmp_path / "c.png")
    with Image.open(tmp_path / "c.png") as png:
        assert png.format == "PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["c.png"]


def test_unwritable_destination_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"cannot write .*c.png: No such file or directory"):
        write_confusion_png(_result(np.eye(3, dtype=np.int64)), tmp_path / "missing" / "c.png")
