"""A prediction scored against its label, and labelled data as the yardstick of ``export --max-drop``.

``update_metric`` is the one place a logit array meets a label: ``evit eval`` calls it per image
and runner, and ``LabelledScore`` per image and int8 candidate, so the mIoU that decides which
layers an export keeps float is the mIoU ``evit eval`` reports for the artifact.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evit_deploy.contracts import Predict
from evit_deploy.labelled.datasets import Dataset, Sample, open_dataset
from evit_deploy.labelled.metrics import ClassificationMetric, SegmentationMetric
from evit_deploy.labelled.protocol import Protocol, load_rgb, protocol_at, upsample_argmax

HEADLINE = {"segmentation": "miou", "classification": "top1"}  # the metric a drop is counted in
METRIC_NAMES = {"miou": "mIoU", "pixel_accuracy": "pixel accuracy", "top1": "top-1", "top5": "top-5"}

Metric = SegmentationMetric | ClassificationMetric


def new_metric(dataset: Dataset) -> Metric:
    """An empty metric for ``dataset``'s task and classes."""
    count = len(dataset.classes)
    return SegmentationMetric(count) if dataset.task == "segmentation" else ClassificationMetric(count)


def update_metric(metric: Metric, logits: np.ndarray, sample: Sample,
                  labels: tuple[np.ndarray, np.ndarray] | None) -> None:
    """Add one image's prediction: ``logits`` (C, h, w) upsampled bicubic to the label size then
    argmax (segmentation, the official protocol), or (C,) against the sample's class."""
    if isinstance(metric, SegmentationMetric):
        assert labels is not None
        ids, valid = labels
        metric.update(upsample_argmax(logits, ids.shape), ids, valid)
    else:
        assert isinstance(sample.label, int)
        metric.update(logits, sample.label)


@dataclass(frozen=True)
class LabelledScore:
    """A labelled dataset fed at one fixed input size (``contracts.TaskData``): each ``score`` call
    reads and preprocesses every image again, so memory holds one image whatever the set's size."""

    dataset: Dataset
    protocol: Protocol

    @property
    def metric(self) -> str:
        return METRIC_NAMES[HEADLINE[self.dataset.task]]

    def __len__(self) -> int:
        return len(self.dataset.samples)

    def score(self, predict: Predict) -> float:
        metric = new_metric(self.dataset)
        segmentation = self.dataset.task == "segmentation"
        for sample in self.dataset.samples:
            labels = self.dataset.read_labels(sample) if segmentation else None
            logits = np.asarray(predict(self.protocol.prepare(load_rgb(sample.image))), np.float32)[0]
            update_metric(metric, logits, sample, labels)
        value = metric.scores().metrics[HEADLINE[self.dataset.task]]
        return 0.0 if value is None else value / 100.0


def open_task_data(source: Path, card: Any, size: tuple[int, int], *, format: str | None = None,
                   limit: int | None = None, classes: Path | None = None) -> LabelledScore:
    """``source`` checked for ``card`` (layout, classes, every label readable: a bad set is refused
    before anything is exported), fed at ``size`` (the artifact's fixed input)."""
    dataset = open_dataset(source, format=format, card=card, limit=limit, classes_file=classes)
    return LabelledScore(dataset, protocol_at(card, size))
