"""What an int8 candidate is held to (``Goal``): agreement with PyTorch on held-out calibration images
(``--min-agreement``), or the task metric on labelled data at most ``--max-drop`` points under
PyTorch's (``--data``), and the timing of a candidate while it is scored.

A goal scores through ``predict`` (one NCHW image in, logits with the classes on axis 1 out), so
a backend runs its candidate in its own runtime and layout and never sees how it is scored.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from evit_deploy.contracts import Predict
from evit_deploy.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from evit_deploy.contracts import ExportContext
    from evit_deploy.spec import InputSpec


def torch_predict(model: torch.nn.Module) -> Predict:
    """PyTorch's own ``predict``: the reference every goal is measured against."""
    import torch

    def predict(image: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model(torch.from_numpy(np.ascontiguousarray(image)))
        return (out[0] if isinstance(out, (tuple, list)) else out).float().numpy()

    return predict


def reference_labels(model: torch.nn.Module, images: list[np.ndarray]) -> list[np.ndarray]:
    """PyTorch's class per pixel (or per image) on ``images`` (NCHW), the agreement's reference."""
    predict = torch_predict(model)
    return [predict(image).argmax(axis=1) for image in images]


def agreement(predicted: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> float:
    """Share of pixels (or images) whose class is PyTorch's."""
    agree = sum(int(np.sum(p == label)) for p, label in zip(predicted, labels))
    return agree / max(1, sum(label.size for label in labels))


@dataclass(frozen=True)
class Goal:
    """What a candidate is held to, in the user's terms: ``score(predict)`` (0..1, higher is better,
    ``predict`` runs the candidate on one NCHW image) must reach ``target``."""

    score: Callable[[Predict], float]
    target: float
    measure: str  # "agreement", or the task metric's name ("mIoU", "top-1")
    images: int
    on: str  # what the images are
    max_drop: float | None = None  # points, when the target is PyTorch's score less this
    reference: float | None = None  # PyTorch's own score there (--max-drop)

    def show(self, value: float) -> str:
        """Agreement as a share (0.9903), a task metric in points as ``evit eval`` prints it (71.23)."""
        return f"{value:.4f}" if self.max_drop is None else f"{100 * value:.2f}"

    @property
    def bar(self) -> str:
        """The target as asked for: ``--min-agreement 0.99``, ``69.00 (--max-drop 1 under PyTorch's 70.00)``."""
        if self.max_drop is None:
            return f"--min-agreement {self.target:g}"
        assert self.reference is not None
        return f"{self.show(self.target)} (--max-drop {self.max_drop:g} under PyTorch's {self.show(self.reference)})"

    @property
    def missed(self) -> str:
        """The artifact's stem suffix when the target is not met."""
        return "below-min-agreement" if self.max_drop is None else "over-max-drop"


def agreement_goal(model: torch.nn.Module, held_out: list[np.ndarray], target: float) -> Goal:
    """Agreement with PyTorch's class per pixel (or image) on ``held_out`` (NCHW)."""
    labels = reference_labels(model, held_out)

    def score(predict: Predict) -> float:
        return agreement([np.asarray(predict(image)).argmax(axis=1) for image in held_out], labels)

    return Goal(score, target, "agreement", len(held_out), "held-out calibration image(s)")


def task_goal(model: torch.nn.Module, ctx: ExportContext, spec: InputSpec, max_drop: float) -> Goal:
    """The task metric on ``--data``, at most ``max_drop`` points under PyTorch's on the same images."""

    if ctx.task_data is None:
        raise UsageError(f"--max-drop {max_drop:g} scores candidates on labelled data: add --data DIR")
    data = ctx.task_data(spec)
    ctx.progress(f"accuracy control: PyTorch's {data.metric} on {len(data)} labelled image(s)")
    score = data.score(torch_predict(model))
    return Goal(data.score, score - max_drop / 100.0, data.metric, len(data), "labelled image(s) of --data",
                max_drop, score)


class Timed:
    """A candidate's ``predict``, timed: the control records each candidate's latency beside its score."""

    def __init__(self, predict: Predict) -> None:
        self._predict, self.seconds, self.calls = predict, 0.0, 0

    def __call__(self, image: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        out = self._predict(image)
        self.seconds += time.perf_counter() - started
        self.calls += 1
        return out

    @property
    def extra(self) -> dict[str, Any]:
        return {"ms_per_image": round(1000 * self.seconds / max(1, self.calls), 1)}


__all__ = ["Goal", "Timed", "agreement", "agreement_goal", "reference_labels", "task_goal", "torch_predict"]
