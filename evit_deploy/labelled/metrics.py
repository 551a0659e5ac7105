"""Task metrics against ground truth, accumulated in a confusion matrix so memory stays bounded.

Nothing here keeps a prediction: each image updates a ``num_classes x num_classes`` count
matrix (rows: label, columns: prediction) and is dropped, so a 500-image Cityscapes run needs
the same memory as a 5-image one.

Segmentation follows the official EfficientViT eval (``SegIOU`` in
``eval_efficientvit_seg_model.py``): per class, intersection and union are summed over the
whole set (ignored pixels excluded), IoU = sum I / sum U, mIoU = the mean over classes. A
class predicted somewhere but absent from the labels has U > 0 and I = 0: IoU 0, in the mean,
as there. A class absent from both labels and predictions has U = 0: the official script
divides 0 by 0 and prints ``nan`` for the whole mIoU; here its IoU is undefined (``None``),
it is left out of the mean, and ``absent`` names it. Whenever the official figure is defined
(every class occurs somewhere) the two agree.

Classification: top-1/top-5 accuracy, as the official ``accuracy(output, target, topk)``.
Figures are percentages, like the published ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Scores:
    """One runner's figures over a dataset: data, rendered elsewhere."""

    metrics: dict[str, float | None]  # percentages
    per_class: list[float | None]  # IoU (segmentation) or accuracy (classification) per class, %
    support: list[int]  # labelled pixels / images per class
    absent: list[int]  # classes with no label and no prediction (left out of the mean)
    confusion: np.ndarray = field(repr=False)  # rows: label, columns: prediction

    def to_dict(self) -> dict[str, Any]:
        """Per-class lists follow the result's ``classes`` (names can repeat: ImageNet has two "crane")."""
        return {"metrics": self.metrics, "per_class": self.per_class, "support": self.support, "absent": self.absent}


class ConfusionMatrix:
    """Streaming label-vs-prediction counts over the valid (non-ignored) entries."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.counts = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, labels: np.ndarray, predictions: np.ndarray, valid: np.ndarray | None = None) -> None:
        labels, predictions = labels.ravel(), predictions.ravel()
        if valid is not None:
            keep = valid.ravel()
            labels, predictions = labels[keep], predictions[keep]
        n = self.num_classes
        flat = labels.astype(np.int64) * n + predictions.astype(np.int64)
        self.counts += np.bincount(flat, minlength=n * n).reshape(n, n)


def _percent(numerator: np.ndarray, denominator: np.ndarray) -> list[float | None]:
    return [100.0 * float(i) / float(u) if u > 0 else None for i, u in zip(numerator, denominator)]


def segmentation_scores(confusion: np.ndarray) -> Scores:
    """mIoU, per-class IoU and pixel accuracy from a label-vs-prediction count matrix."""
    intersection = np.diag(confusion)
    labelled = confusion.sum(axis=1)
    union = labelled + confusion.sum(axis=0) - intersection
    iou = _percent(intersection, union)
    defined = [v for v in iou if v is not None]
    total = int(labelled.sum())
    metrics: dict[str, float | None] = {
        "miou": float(np.mean(defined)) if defined else None,
        "pixel_accuracy": 100.0 * float(intersection.sum()) / total if total else None,
    }
    return Scores(metrics, iou, [int(v) for v in labelled], [i for i, v in enumerate(iou) if v is None],
                  confusion.copy())


class SegmentationMetric:
    """Pixel labels of one runner against the ground truth."""

    def __init__(self, num_classes: int) -> None:
        self.matrix = ConfusionMatrix(num_classes)

    def update(self, predictions: np.ndarray, labels: np.ndarray, valid: np.ndarray) -> None:
        self.matrix.update(labels, predictions, valid)

    def scores(self) -> Scores:
        return segmentation_scores(self.matrix.counts)


class ClassificationMetric:
    """Top-1/top-5 of one runner's logits against image labels."""

    def __init__(self, num_classes: int, k: int = 5) -> None:
        self.matrix = ConfusionMatrix(num_classes)
        self.k = min(k, num_classes)
        self.hits_k = 0

    def update(self, logits: np.ndarray, label: int) -> None:
        scores = np.nan_to_num(logits.reshape(-1).astype(np.float64), nan=-np.inf)
        # stable sort on the negated scores: ties go to the lower index, as torch.topk and argmax do
        top = np.argsort(-scores, kind="stable")[: self.k]
        self.hits_k += int(label in top)
        self.matrix.update(np.array([label]), top[:1])

    def scores(self) -> Scores:
        confusion = self.matrix.counts
        samples = int(confusion.sum())
        per_class = _percent(np.diag(confusion), confusion.sum(axis=1))
        metrics: dict[str, float | None] = {
            "top1": 100.0 * float(np.trace(confusion)) / samples if samples else None,
            f"top{self.k}": 100.0 * self.hits_k / samples if samples else None,
        }
        support = [int(v) for v in confusion.sum(axis=1)]
        return Scores(metrics, per_class, support, [], confusion.copy())
