"""Compare two runners' outputs: tensor metrics, task metrics, and pass/fail checks.

A comparison result is plain data (``ParityReport``); rendering it as a table, JSON or
JUnit lives in ``report.py``. Metrics accumulate over every sample, and each is judged
at its worst: the largest error, the smallest cosine.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evit_deploy.configs import Tolerances
from evit_deploy.contracts import AmbiguousOutputs
from evit_deploy.sam.transforms import postprocess_masks


@dataclass
class OutputMetrics:
    """Errors of one output over all samples (artifact vs reference)."""

    max_abs: float = 0.0
    mean_abs: float = 0.0
    max_rel: float = 0.0  # max|a - r| / max|r|, per sample, worst sample
    cosine: float = 1.0  # cosine similarity of the flattened outputs, worst sample
    allclose_violations: int = 0  # elements outside atol + rtol*|ref|
    nonfinite: int = 0  # NaN/Inf elements in the artifact's output
    elements: int = 0
    _abs_sum: float = 0.0

    def update(self, art: np.ndarray, ref: np.ndarray, tol: Tolerances, *, rows_are_samples: bool = True) -> None:
        """``rows_are_samples``: the first axis is a batch of samples, each judged at its own scale; else
        the whole output is one sample (SAM's prompt rows share one image: a row may be one score near 0)."""
        art64, ref64 = art.astype(np.float64), ref.astype(np.float64)
        if not rows_are_samples:
            art64, ref64 = art64[None], ref64[None]
        bad = ~np.isfinite(art64)
        self.nonfinite += int(bad.sum())
        diff = np.abs(np.where(bad, np.inf, art64 - ref64))
        self.elements += diff.size
        self._abs_sum += float(diff.sum())
        self.mean_abs = self._abs_sum / self.elements
        self.max_abs = max(self.max_abs, float(diff.max()))
        for a, r, d in zip(art64, ref64, diff):  # per sample of the batch
            scale = float(np.abs(r).max()) or 1.0
            self.max_rel = max(self.max_rel, float(d.max()) / scale)
            self.cosine = min(self.cosine, _cosine(a.ravel(), r.ravel()))
        if tol.atol is not None or tol.rtol is not None:
            limit = (tol.atol or 0.0) + (tol.rtol or 0.0) * np.abs(ref64)
            self.allclose_violations += int((diff > limit).sum())

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_abs": _finite(self.max_abs),
            "mean_abs": _finite(self.mean_abs),
            "max_rel": _finite(self.max_rel),
            "cosine": _finite(self.cosine),
            "nonfinite": self.nonfinite,
            "allclose_violations": self.allclose_violations,
            "elements": self.elements,
        }


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    if not np.all(np.isfinite(a)):
        return float("nan")
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def _finite(value: float) -> float | None:
    """JSON has no NaN/Inf: a non-finite metric is reported as null (and fails its check)."""
    return value if math.isfinite(value) else None


@dataclass
class SegmentationAgreement:
    """Argmax labels of the artifact vs the reference's: agreement and mIoU."""

    num_classes: int
    agree: int = 0
    pixels: int = 0
    intersection: np.ndarray = field(init=False)
    union: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.intersection = np.zeros(self.num_classes, dtype=np.int64)
        self.union = np.zeros(self.num_classes, dtype=np.int64)

    def update(self, art: np.ndarray, ref: np.ndarray) -> None:
        art_labels = np.nan_to_num(art, nan=-np.inf).argmax(axis=1).ravel()
        ref_labels = ref.argmax(axis=1).ravel()
        self.agree += int((art_labels == ref_labels).sum())
        self.pixels += ref_labels.size
        n = self.num_classes
        art_count = np.bincount(art_labels, minlength=n)
        ref_count = np.bincount(ref_labels, minlength=n)
        both = np.bincount(ref_labels[art_labels == ref_labels], minlength=n)
        self.intersection += both
        self.union += art_count + ref_count - both

    def metrics(self) -> dict[str, float]:
        present = self.union > 0
        miou = float((self.intersection[present] / self.union[present]).mean()) if present.any() else 1.0
        return {"pixel_agreement": self.agree / max(1, self.pixels), "miou": miou}


@dataclass
class ClassificationAgreement:
    """top1: same argmax; top5: the reference's argmax is among the artifact's top five."""

    top1: int = 0
    top5: int = 0
    samples: int = 0

    def update(self, art: np.ndarray, ref: np.ndarray) -> None:
        art = np.nan_to_num(art.reshape(len(art), -1), nan=-np.inf)
        ref_top = ref.reshape(len(ref), -1).argmax(axis=1)
        art_top5 = np.argsort(-art, axis=1)[:, :5]
        self.top1 += int((art_top5[:, 0] == ref_top).sum())
        self.top5 += int((art_top5 == ref_top[:, None]).any(axis=1).sum())
        self.samples += len(ref)

    def metrics(self) -> dict[str, float]:
        n = max(1, self.samples)
        return {"top1_agreement": self.top1 / n, "top5_agreement": self.top5 / n}


@dataclass
class SamMaskAgreement:
    """SAM decoder outputs of the artifact vs the reference's, as a SAM user sees them.

    Masks are logits > 0. Per prompt and mask token: IoU of the two 256x256 masks (two empty
    masks agree: IoU 1). Per prompt: IoU of the reference's best-scored token's mask after the
    official postprocessing (upscale to the 1024 frame, crop the padding, resize to the image),
    where a near-zero logit can flip pixels the low-res masks hide; the largest error of a
    predicted IoU; and whether both pick the same best token (only with several tokens).
    """

    iou_sum: float = 0.0
    iou_count: int = 0
    iou_worst: float = 1.0
    image_iou_sum: float = 0.0
    image_count: int = 0
    score_error: float = 0.0
    best_agree: int = 0
    prompts: int = 0
    tokens: int = 0

    def update(self, masks: tuple[np.ndarray, np.ndarray], scores: tuple[np.ndarray, np.ndarray],
               image_size: tuple[int, int] | None) -> None:
        (art_masks, ref_masks), (art_scores, ref_scores) = masks, scores
        iou = _mask_iou(art_masks > 0, ref_masks > 0)  # (B, K); NaN logits are not > 0
        self.iou_sum += float(iou.sum())
        self.iou_count += iou.size
        self.iou_worst = min(self.iou_worst, float(iou.min()))
        error = np.abs(np.nan_to_num(art_scores.astype(np.float64) - ref_scores, nan=np.inf))
        self.score_error = max(self.score_error, float(error.max()))
        best = ref_scores.argmax(axis=1)
        self.tokens = ref_scores.shape[1]
        if self.tokens > 1:
            self.best_agree += int((np.nan_to_num(art_scores, nan=-np.inf).argmax(axis=1) == best).sum())
        self.prompts += len(best)
        if image_size is not None:
            for row, token in enumerate(best):  # one prompt at a time: a 1024 x 1024 map each
                pair = np.stack([art_masks[row, token], ref_masks[row, token]])
                art, ref = postprocess_masks(pair, image_size) > 0
                self.image_iou_sum += float(_mask_iou(art[None, None], ref[None, None])[0, 0])
                self.image_count += 1

    def metrics(self) -> dict[str, float]:
        metrics = {"mask_iou": self.iou_sum / max(1, self.iou_count), "mask_iou_worst": self.iou_worst,
                   "iou_prediction_error": self.score_error}
        if self.image_count:
            metrics["mask_iou_image"] = self.image_iou_sum / self.image_count
        if self.tokens > 1:
            metrics["best_mask_agreement"] = self.best_agree / max(1, self.prompts)
        return metrics


def _mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU over the last two axes of two boolean mask stacks; 1 where both are empty."""
    inter = (a & b).sum(axis=(-2, -1))
    union = (a | b).sum(axis=(-2, -1))
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


# task metric -> how its check reads (larger is better, except an error)
TASK_CHECKS = {"pixel_agreement": ">=", "miou": ">=", "top1_agreement": ">=", "top5_agreement": ">=",
               "mask_iou": ">=", "mask_iou_image": ">=", "iou_prediction_error": "<=", "best_mask_agreement": ">="}


@dataclass
class Check:
    """One pass/fail criterion: ``value op threshold``."""

    name: str
    value: float | None
    threshold: float
    op: str  # "<=" or ">="
    passed: bool
    weights_rounded: float | None = None  # the same metric with only the weights rounded (task checks)

    @property
    def out_of_reach(self) -> bool:
        """Failed, and the weight-rounded reference fails it too: the precision, not the export, limits it."""
        if self.passed or self.weights_rounded is None:
            return False
        bound = self.weights_rounded
        return bound > self.threshold if self.op == "<=" else bound < self.threshold

    def describe(self) -> str:
        shown = "nan" if self.value is None else f"{self.value:.6g}"
        limit = f"; the weights rounded alone reach {self.weights_rounded:.6g}" if self.out_of_reach else ""
        return f"{self.name} = {shown} (needs {self.op} {self.threshold:g}{limit})"


@dataclass
class ParityReport:
    """Everything ``verify`` measured, as data."""

    model: str
    task: str
    artifact: str
    precision: str
    samples: int
    input_source: str
    outputs: dict[str, OutputMetrics]
    task_metrics: dict[str, float]
    checks: list[Check]
    reference: dict[str, Any] = field(default_factory=dict)
    runner: dict[str, Any] = field(default_factory=dict)
    tolerances: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    weight_rounding: dict[str, float] | None = None  # task metrics of the weight-rounded reference
    # samples judged by the side an ill-conditioned attention token took (evit_deploy.nn.ties): which
    # tokens, and the artifact's max_rel against the reference's side and against its own
    excused: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "model": self.model,
            "model_task": self.task,
            "artifact": self.artifact,
            "precision": self.precision,
            "samples": self.samples,
            "inputs": self.input_source,
            "outputs": {name: m.to_dict() for name, m in self.outputs.items()},
            "task": {name: _finite(value) for name, value in self.task_metrics.items()},
            "weight_rounding": self.weight_rounding,
            "checks": [c.__dict__ for c in self.checks],
            "failed": [c.name for c in self.failures],
            "tolerances": self.tolerances,
            "reference": self.reference,
            "runner": self.runner,
            "excused": self.excused,
            "notes": self.notes,
        }


@dataclass
class BundleReport:
    """``verify`` of a several-graph export: one report per graph; passes when every graph passes."""

    bundle: str
    graphs: dict[str, ParityReport]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.graphs.values())

    @property
    def failures(self) -> list[Check]:
        return [Check(f"{graph}.{c.name}", c.value, c.threshold, c.op, c.passed)
                for graph, report in self.graphs.items() for c in report.failures]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "bundle": self.bundle,
                "graphs": {name: report.to_dict() for name, report in self.graphs.items()},
                "failed": [c.name for c in self.failures]}


class Comparator:
    """Feeds pairs of output dicts in, produces a ``ParityReport`` at the end."""

    def __init__(self, task: str, num_classes: int, tolerances: Tolerances) -> None:
        self.task = task
        self.tol = tolerances
        self.outputs: dict[str, OutputMetrics] = {}
        self.samples = 0
        self.excused: list[dict[str, Any]] = []  # samples judged against an alternative reference outcome
        self.seg = SegmentationAgreement(num_classes) if task == "segmentation" else None
        self.cls = ClassificationAgreement() if task == "classification" else None
        self.sam = SamMaskAgreement() if task == "sam-masks" else None

    def update(self, artifact: dict[str, np.ndarray], reference: dict[str, np.ndarray], *,
               image_size: tuple[int, int] | None = None) -> None:
        """One sample's outputs; ``image_size`` (h, w) of the photo a SAM prompt batch was made on. An
        ``AmbiguousOutputs`` reference is judged by the outcome closest to the artifact."""
        if isinstance(reference, AmbiguousOutputs):
            reference = self._closest(artifact, reference)
        pairs = _pairs(artifact, reference)
        for name, art, ref in pairs:
            if art.shape != ref.shape:
                raise ValueError(f"output {name!r}: artifact shape {art.shape} but reference {ref.shape}")
            self.outputs.setdefault(name, OutputMetrics()).update(art, ref, self.tol, rows_are_samples=self.sam is None)
            if self.seg is not None:
                self.seg.update(art, ref)
            if self.cls is not None:
                self.cls.update(art, ref)
        if self.sam is not None:  # the reference's names: masks, iou_predictions
            paired = {name: (art, ref) for name, art, ref in pairs}
            self.sam.update(paired["masks"], paired["iou_predictions"], image_size)
        self.samples += 1

    def _closest(self, artifact: dict[str, np.ndarray], reference: AmbiguousOutputs) -> dict[str, np.ndarray]:
        """The alternative the artifact matches within ``max_rel`` (worst output) where it does not match the
        reference's own side, recorded in ``excused``; else the reference's side, judged as usual."""
        candidates = [dict(reference), *reference.alternatives]
        errors = [max(_max_rel(art, ref) for _, art, ref in _pairs(artifact, c)) for c in candidates]
        best = int(np.argmin(errors))
        if best and not (self.tol.max_rel is not None and errors[best] <= self.tol.max_rel):
            best = 0  # matching no side: the other sides excuse nothing
        if best:
            self.excused.append({"sample": self.samples + 1, "tokens": list(reference.reasons),
                                 "max_rel_reference_side": errors[0], "max_rel_taken_side": errors[best]})
        return candidates[best]

    def checks(self, task_metrics: dict[str, float]) -> list[Check]:
        tol = self.tol
        checks: list[Check] = []

        def add(name: str, value: float | None, threshold: float | None, op: str) -> None:
            if threshold is None:
                return
            ok = value is not None and math.isfinite(value) and (value <= threshold if op == "<=" else value >= threshold)
            checks.append(Check(name, value, threshold, op, ok))

        for name, m in self.outputs.items():
            add(f"outputs.{name}.nonfinite", m.nonfinite, 0, "<=")
            add(f"outputs.{name}.max_rel", _finite(m.max_rel), tol.max_rel, "<=")
            add(f"outputs.{name}.cosine", _finite(m.cosine), tol.cosine, ">=")
            if tol.atol is not None or tol.rtol is not None:
                add(f"outputs.{name}.allclose_violations", m.allclose_violations, 0, "<=")
        for key, op in TASK_CHECKS.items():
            if key in task_metrics:
                add(f"task.{key}", task_metrics[key], getattr(tol, key), op)
        return checks

    def task_metrics(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.seg is not None:
            metrics.update(self.seg.metrics())
        if self.cls is not None:
            metrics.update(self.cls.metrics())
        if self.sam is not None:
            metrics.update(self.sam.metrics())
        return metrics

    def report(self, *, weight_rounding: Comparator | None = None, **fields: Any) -> ParityReport:
        """``weight_rounding``: a comparator fed the weight-rounded reference's outputs (see
        ``evit_deploy.weight_rounding``); its task metrics annotate the task checks."""
        task_metrics = self.task_metrics()
        checks = self.checks(task_metrics)
        bounds = weight_rounding.task_metrics() if weight_rounding is not None else None
        for check in checks:
            if bounds is not None and check.name.startswith("task."):
                check.weights_rounded = bounds.get(check.name.removeprefix("task."))
        limited = _out_of_reach_note([c for c in checks if c.out_of_reach], fields.get("precision", ""))
        excused = [f"sample {e['sample']}: {'; '.join(e['tokens'])}; the artifact took the other side (max_rel "
                   f"{e['max_rel_reference_side']:.2g} against the reference's side, {e['max_rel_taken_side']:.2g} "
                   "against its own), so it is judged against the reference with that tie broken its way "
                   "(evit_deploy.nn.ties)" for e in self.excused]
        fields["notes"] = [*fields.get("notes", []), *excused, *([limited] if limited else [])]
        return ParityReport(
            task=self.task,
            samples=self.samples,
            outputs=self.outputs,
            task_metrics=task_metrics,
            checks=checks,
            tolerances=self.tol.model_dump(exclude_none=True),
            weight_rounding=bounds,
            excused=self.excused,
            **fields,
        )


def _pairs(artifact: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, artifact, reference) per output: by name when the names agree, else by position
    (converters rename outputs)."""
    if len(artifact) != len(reference):
        raise ValueError(f"artifact gives {sorted(artifact)} but the reference gives {sorted(reference)}")
    if set(artifact) == set(reference):
        return [(n, artifact[n], reference[n]) for n in reference]
    return [(rn, artifact[an], reference[rn]) for an, rn in zip(artifact, reference)]


def _max_rel(art: np.ndarray, ref: np.ndarray) -> float:
    """Worst per-sample max|a - r| / max|r| (OutputMetrics' measure), NaN-safe for choosing."""
    if art.shape != ref.shape:
        return math.inf
    worst = 0.0
    for a, r in zip(art.astype(np.float64), ref.astype(np.float64)):
        d = np.abs(a - r)
        worst = max(worst, float(np.nan_to_num(d, nan=np.inf).max()) / (float(np.abs(r).max()) or 1.0))
    return worst


def _out_of_reach_note(limited: list[Check], precision: str) -> str | None:
    """Why failed task checks are the precision's limit, not the export's."""
    if not limited:
        return None
    names = ", ".join(f"{c.name} (weights rounded alone: {c.weights_rounded:.4g})" for c in limited)
    return (f"{names}: the PyTorch reference misses the threshold too once only its weights are rounded to "
            f"{precision}, so an {precision} artifact cannot be expected to meet it for these weights on these "
            "inputs; the model's "
            "decision margins are thinner than the precision (untrained or barely trained weights, ambiguous "
            "inputs): judge with the trained checkpoint on real images")
