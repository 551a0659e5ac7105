"""Metrics against confusion matrices computed by hand: ignored pixels, absent classes, top-k ties."""
from __future__ import annotations

import numpy as np
import pytest

from evit_deploy.labelled.metrics import ClassificationMetric, ConfusionMatrix, SegmentationMetric

IGNORE = 255


def _seg(labels: list[list[int]], predictions: list[list[int]], classes: int) -> SegmentationMetric:
    metric = SegmentationMetric(classes)
    lab = np.array(labels)
    metric.update(np.array(predictions), np.where(lab == IGNORE, 0, lab), lab != IGNORE)
    return metric


def test_confusion_counts_rows_label_columns_prediction_and_skips_ignored() -> None:
    matrix = ConfusionMatrix(3)
    labels = np.array([0, 0, 1, 2, 2, 2])
    predictions = np.array([0, 1, 1, 2, 0, 1])
    valid = np.array([True, True, True, True, True, False])
    matrix.update(labels, predictions, valid)
    assert matrix.counts.tolist() == [[1, 1, 0],
                                      [0, 1, 0],
                                      [1, 0, 1]]


def test_segmentation_scores_by_hand() -> None:
    # labels / predictions (255 ignored); 3 classes, all present.
    metric = _seg([[0, 0, 1, 255],
                   [2, 2, 1, 1]],
                  [[0, 1, 1, 2],
                   [2, 0, 1, 0]], 3)
    # valid pixels: (l, p) = (0,0) (0,1) (1,1) (2,2) (2,0) (1,1) (1,0)
    # class 0: I=1, labelled 2, predicted 3 -> U=4; class 1: I=2, labelled 3, predicted 3 -> U=4;
    # class 2: I=1, labelled 2, predicted 1 -> U=2
    scores = metric.scores()
    assert scores.per_class == pytest.approx([25.0, 50.0, 50.0])
    assert scores.metrics["miou"] == pytest.approx(125.0 / 3)
    assert scores.metrics["pixel_accuracy"] == pytest.approx(100.0 * 4 / 7)
    assert scores.support == [2, 3, 2] and scores.absent == []


def test_a_class_predicted_but_never_labelled_counts_zero_in_the_mean() -> None:
    scores = _seg([[0, 0], [0, 0]], [[0, 0], [0, 1]], 2).scores()
    assert scores.per_class == pytest.approx([75.0, 0.0])  # class 0: I=3, U=4; class 1: I=0, U=1
    assert scores.metrics["miou"] == pytest.approx(37.5)
    assert scores.absent == []


def test_a_class_in_neither_labels_nor_predictions_is_left_out_and_named() -> None:
    scores = _seg([[0, 1], [1, IGNORE]], [[0, 1], [0, 2]], 4).scores()
    # class 0: I=1, U=2; class 1: I=1, U=2; class 2: only predicted on an ignored pixel -> absent; class 3 absent
    assert scores.per_class[:2] == pytest.approx([50.0, 50.0])
    assert scores.per_class[2:] == [None, None] and scores.absent == [2, 3]
    assert scores.metrics["miou"] == pytest.approx(50.0)


def test_streaming_equals_one_pass() -> None:
    rng = np.random.default_rng(0)
    labels, predictions = rng.integers(0, 5, (2, 3, 40, 50))
    valid = rng.random((3, 40, 50)) > 0.2
    whole, parts = SegmentationMetric(5), SegmentationMetric(5)
    whole.update(predictions, labels, valid)
    for p, lab, v in zip(predictions, labels, valid):
        parts.update(p, lab, v)
    assert np.array_equal(whole.matrix.counts, parts.matrix.counts)
    assert whole.scores().metrics == parts.scores().metrics


def test_nothing_valid_gives_no_figures() -> None:
    scores = _seg([[IGNORE]], [[0]], 2).scores()
    assert scores.metrics == {"miou": None, "pixel_accuracy": None} and scores.absent == [0, 1]


def test_classification_top1_top5_by_hand() -> None:
    metric = ClassificationMetric(7)
    metric.update(np.array([0.0, 9, 1, 2, 3, 4, 5]), 1)  # top-1 hit
    metric.update(np.array([9.0, 1, 2, 3, 4, 5, 0]), 2)  # 2 is 5th best: top-5 hit only
    metric.update(np.array([9.0, 8, 7, 6, 5, 4, 3]), 6)  # miss
    metric.update(np.array([1.0, 1, 0, 0, 0, 0, 0]), 0)  # tie: the lower index wins, as torch's argmax
    scores = metric.scores()
    assert scores.metrics["top1"] == pytest.approx(50.0)
    assert scores.metrics["top5"] == pytest.approx(75.0)
    assert scores.support == [1, 1, 1, 0, 0, 0, 1]
    assert scores.per_class == [100.0, 100.0, 0.0, None, None, None, 0.0]


def test_nan_logits_never_win() -> None:
    metric = ClassificationMetric(3)
    metric.update(np.array([np.nan, 0.5, 0.2]), 1)
    assert metric.scores().metrics["top1"] == 100.0


def test_fewer_than_five_classes_reports_top_k_of_all() -> None:
    metric = ClassificationMetric(3)
    metric.update(np.array([0.0, 1, 2]), 0)
    assert metric.scores().metrics == {"top1": 0.0, "top3": 100.0}
