"""Accuracy-controlled quantisation: keep the most harmful quantised layers in float until a
target is met: agreement with PyTorch (``--min-agreement``), or the task metric on labelled data
no more than ``--max-drop`` points under PyTorch's (``--data``).

Target-neutral on purpose: a backend hands in its layers ranked worst first, a callable that
quantises with a given set of layers kept float, and one that scores such a candidate (``Goal``:
on held-out calibration images, or on the labelled ones; never on images the quantisation ranges
were taken from). This
module decides which of the ranked layers to keep: none if plain int8 already meets the target;
otherwise the shortest prefix of the ranking that meets it, found by bisection (a handful of
quantisations instead of one per layer), and then each of its layers, costliest first (the
multiply-adds it keeps float), is dropped again when the target still holds without it. When
even the longest prefix allowed (``max_kept``) falls short, the best candidate seen is returned
with ``met=False``: the caller keeps it under a name that says so and exits 1.

Why a prefix, and why the second pass: more layers in float rarely make int8 worse by much, so
agreement is close to monotone in the prefix length, and bisection finds a prefix that meets the
target in about log2(N) quantisations. With thin decision margins it is not: rounding errors of
different layers cancel, and a layer kept float can undo a cancellation. On seeded seg-B1
(TFLite, 512x1024) 35 layers float agreed 0.939 with PyTorch on the held-out images and 52
layers 0.917, and bisection settled on 58 layers. The second pass, one quantisation per layer of
that prefix, removed 42 of them (0.940 with 16). Costliest first because the pass is greedy: the
first layers offered back take the slack the target leaves. Offered least harmful first, 26
stayed float, the stem's and the first stages' among them, and the artifact ran at 1.05x fp32;
costliest first the 16 left ran at 1.74x (plain int8 2.16x). (Walking the ranking forward
instead, keeping a layer only when it raised the agreement, kept 16 layers there too but stalls
where the agreement is coarse: on seg-B0 at 64x128, 256 held-out pixels, no single layer moves
it, and the walk ended far below a target all layers float meet.) Every candidate measured is in
``steps``.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
from pydantic import Field

from evit_deploy.contracts import TargetOptions
from evit_deploy.control_goal import Goal, agreement_goal, task_goal
from evit_deploy.errors import UsageError
from evit_deploy.spec import Precision

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from evit_deploy.configs import Recipe
    from evit_deploy.contracts import ExportContext
    from evit_deploy.spec import InputSpec

Candidate = TypeVar("Candidate")
T = TypeVar("T")


class ControlOptions(TargetOptions):
    """The recipe options of int8 accuracy control, the same for every target that offers it."""

    # keep the layers adding the most quantisation noise float until the agreement with PyTorch
    # on the held-out share of the calibration images reaches min_agreement
    min_agreement: float | None = Field(None, gt=0.0, le=1.0)
    # or until the task metric (mIoU / top-1) on the labelled images of --data is at most this many
    # points under PyTorch's on the same images
    max_drop: float | None = Field(None, ge=0.0, le=100.0)
    holdout: float = Field(0.25, gt=0.0, lt=1.0)  # share of the calibration images held out for agreement
    max_float_share: float = Field(0.25, ge=0.0, le=1.0)  # at most this share of the quantised layers kept float

    @property
    def controlled(self) -> bool:
        """Whether int8 runs under a control (either target)."""
        return self.min_agreement is not None or self.max_drop is not None


def check_control(recipe: Recipe, options: ControlOptions) -> None:
    """Refuse, before anything is built, an accuracy control the recipe cannot give."""
    if options.min_agreement is None and options.max_drop is None:
        return
    if options.min_agreement is not None and options.max_drop is not None:
        raise UsageError(f"--min-agreement {options.min_agreement:g} and --max-drop {options.max_drop:g} are two "
                         "targets for one control: keep --min-agreement (agreement with PyTorch on held-out "
                         "calibration images) or --max-drop (task metric on --data), not both")
    flag = "--min-agreement" if options.min_agreement is not None else "--max-drop"
    if recipe.precision != Precision.INT8:
        raise UsageError(f"{flag} controls int8 quantisation; this export is {recipe.precision}: "
                         f"add --precision int8 or drop {flag}")
    if recipe.batch != 1:
        raise UsageError(f"{flag} scores candidates image by image: export with --batch 1 (got {recipe.batch})")
    if options.max_drop is not None:
        if recipe.data.source is None:
            raise UsageError(f"--max-drop {options.max_drop:g} bounds the loss of mIoU / top-1 on labelled data: add "
                             "--data DIR (a dataset in a layout `evit eval` reads)")
        return
    if recipe.calibration.samples is not None and recipe.calibration.samples < 2:
        raise UsageError("--min-agreement holds out part of the calibration images to measure agreement "
                         f"on: give at least 2 (--calib-samples {recipe.calibration.samples})")


def control_images(ctx: ExportContext, spec: InputSpec, options: ControlOptions) -> list[np.ndarray]:
    """The calibration images, held in memory: ranked on, and (``--min-agreement``) split."""
    singles = list(ctx.calibration_batches(spec))
    if options.min_agreement is not None and len(singles) < 2:
        raise UsageError("--min-agreement holds out part of the calibration images to measure agreement on: "
                         f"give at least 2 (got {len(singles)})")
    return singles


def control_split(images: list[T], options: ControlOptions) -> tuple[list[T], list[T]]:
    """(ranges from, agreement on): with ``--max-drop`` every calibration image sets ranges, and the
    labelled data is what candidates are held to."""
    return (images, []) if options.min_agreement is None else split_holdout(images, options.holdout)


def split_holdout(images: list[T], share: float) -> tuple[list[T], list[T]]:
    """(ranges from, agreement on): every k-th image held out, so both halves span the set."""
    count = max(1, round(len(images) * share))
    step = len(images) / count
    held = {min(len(images) - 1, int(i * step + step / 2)) for i in range(count)}
    return [x for i, x in enumerate(images) if i not in held], [x for i, x in enumerate(images) if i in held]


def spread(images: Sequence[T], count: int) -> list[T]:
    """``count`` of ``images``, every k-th, so that they span the set: a folder sorted by name
    keeps each photo's views together, and the first few would be one photo."""
    if len(images) <= count:
        return list(images)
    step = len(images) / count
    return [images[int(i * step)] for i in range(count)]


NEAR_TIE_SHARE = 0.1  # the share of the reference's pixels (or images) with the smallest top-1 margins


@dataclass(frozen=True)
class NearTies:
    """Where a little noise changes the class: per output, PyTorch's class, its margin over the
    runner-up, and the pixels (or images) whose margin is among the smallest ``NEAR_TIE_SHARE``."""

    classes: list[np.ndarray]
    margins: list[np.ndarray]
    near: list[np.ndarray]  # boolean masks


def _top_margin(logits: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The logit of ``classes`` less the largest other one (classes on the last axis)."""
    top = np.take_along_axis(logits, classes[..., None], -1)[..., 0]
    others = np.where(np.arange(logits.shape[-1]) == classes[..., None], -np.inf, logits)
    return top - others.max(-1)


def near_ties(reference: Sequence[np.ndarray], class_axis: int, share: float = NEAR_TIE_SHARE) -> NearTies:
    """The near-tied pixels of the float outputs ``reference`` (at least one per set)."""
    logits = [np.moveaxis(np.asarray(r, np.float32), class_axis, -1) for r in reference]
    classes = [x.argmax(-1) for x in logits]
    margins = [_top_margin(x, c) for x, c in zip(logits, classes)]
    cut = float(np.quantile(np.concatenate([m.ravel() for m in margins]), share))
    return NearTies(classes, margins, [m <= cut for m in margins])


def margin_lost(ties: NearTies, outputs: Sequence[np.ndarray], class_axis: int) -> float:
    """How much of PyTorch's class margin ``outputs`` take away at the near-tied pixels, on average
    (a margin grown counts 0): the part of a layer's noise that changes classes. Output noise
    power says how loud the noise is; on seeded seg-B1 most of it falls where the class is safe,
    and ranked by it, 35 TFLite layers float agreed 0.903 on the held-out views where ranked by
    this they agreed 0.939, and ONNX Runtime's control reached 0.908 with 55 of 110 nodes float
    where by this it met 0.94 with 44. On the trained instrument the two rank alike (its control
    took 7 layers float for 0.99 by noise power, 6 by this)."""
    lost, count = 0.0, 0
    for output, classes, margin, near in zip(outputs, ties.classes, ties.margins, ties.near):
        now = _top_margin(np.moveaxis(np.asarray(output, np.float32), class_axis, -1), classes)
        lost += float(np.sum(np.clip(margin[near] - now[near], 0.0, None)))
        count += int(np.sum(near))
    return lost / max(1, count)


def ranked_by(unit: str, alone: str, images: int) -> str:
    """The manifest's ``ranked_by``: the one measure every target ranks by, named in its own terms
    (``unit``: layer or node; ``alone``: how that unit is quantised by itself)."""
    return (f"class margin each quantised {unit} alone takes away at the near-tied pixels ({alone}; the "
            f"{NEAR_TIE_SHARE:.0%} of pixels with the smallest top-1 margins), over {images} calibration "
            "images spread over the set")


def control_goal(model: torch.nn.Module, ctx: ExportContext, spec: InputSpec, options: ControlOptions,
                 held_out: list[np.ndarray]) -> Goal:
    """The goal ``options`` ask for (``held_out``: the NCHW calibration images ``control_split`` kept
    back, for ``--min-agreement``)."""
    if options.min_agreement is not None:
        return agreement_goal(model, held_out, options.min_agreement)
    assert options.max_drop is not None
    return task_goal(model, ctx, spec, options.max_drop)


@dataclass(frozen=True)
class Ranked:
    """A quantised layer the backend may keep float, with its measured harm (higher: worse) and what
    keeping it float costs at run time (``cost``: the multiply-adds of the ops that go float with
    it; 0 where the backend cannot tell), in one unit over a ranking."""

    name: str
    score: float
    cost: float = 0.0


@dataclass
class Step:
    """One measured candidate: a prefix of the ranking in float, or a meeting set less one layer
    (``extra["dropped"]``)."""

    kept: int  # layers float in this candidate
    agreement: float
    seconds: float  # quantising and measuring it (the measuring part includes inference)
    extra: dict[str, Any] = field(default_factory=dict)  # the layer dropped, and what the backend measured
    chosen: bool = False  # the candidate returned

    def to_dict(self) -> dict[str, Any]:
        return {"kept_float": self.kept, "agreement": self.agreement, "seconds": round(self.seconds, 2),
                "chosen": self.chosen, **self.extra}


@dataclass
class ControlResult(Generic[Candidate]):
    target: float
    met: bool
    kept: list[str]  # the layers kept float, worst first
    agreement: float  # of the returned candidate, on the held-out images
    candidate: Candidate
    ranking: list[Ranked]
    steps: list[Step]  # in the order measured: the agreement/latency curve

    def shortfall(self, goal: Goal) -> str | None:
        """One line on why ``goal`` was not met (None when it was)."""
        if self.met:
            return None
        tried = max(step.kept for step in self.steps)
        missed = f"{goal.measure} {goal.show(self.agreement)} < {goal.bar}"
        if not self.ranking:
            return f"{missed} with no layer allowed float (--max-float-share)"
        best = "" if len(self.kept) == tried else f", the best with {len(self.kept)} of them"
        return f"{missed} even with up to the {tried} most harmful of {len(self.ranking)} quantised layers in float{best}"

    @property
    def chosen(self) -> Step:
        """The step that measured the returned candidate."""
        return next(step for step in self.steps if step.chosen)

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "met": self.met, "agreement": self.agreement, "kept_float": self.kept,
                "ranking": [{"layer": r.name, "score": r.score, "cost": r.cost} for r in self.ranking],
                "steps": [s.to_dict() for s in self.steps]}


@dataclass(frozen=True)
class Outcome:
    """What the export says about a controlled quantisation: its note, why it failed (None when
    the target was met), and the artifact's stem (a failure is kept under a name that says so)."""

    note: str
    failure: str | None
    stem: str


def outcome(result: ControlResult[Any], plain: float, goal: Goal, model_name: str) -> Outcome:
    kept = ", ".join(result.kept[:5]) + (f" and {len(result.kept) - 5} more" if len(result.kept) > 5 else "")
    failure = result.shortfall(goal)
    plain_text = f"plain int8 {goal.show(plain)}"
    if failure is None:
        note = (f"accuracy control: {goal.measure} {goal.show(result.agreement)} >= {goal.bar} on {goal.images} "
                f"{goal.on} ({plain_text}) with {len(result.kept)} layer(s) float" + (f": {kept}" if kept else ""))
        return Outcome(note, None, model_name)
    note = f"accuracy control: {failure}; {plain_text}" + (f"; float: {kept}" if kept else "")
    return Outcome(note, failure, f"{model_name}.{goal.missed}")


def control_details(result: ControlResult[Any], plain: float, goal: Goal, ranked_by: str) -> dict[str, Any]:
    """``details.int8.accuracy_control`` of the manifest (``agreement`` holds the goal's score, whatever
    it measures: ``measure`` says which); ``latency_ms``: per image on the scored images, plain int8
    against the chosen candidate (measured during the control)."""
    scored = {"measure": goal.measure, "scored_on": f"{goal.images} {goal.on}"}
    if goal.max_drop is not None:
        scored.update(max_drop=goal.max_drop, pytorch=goal.reference, drop=goal.reference - result.agreement,
                      plain_int8_drop=goal.reference - plain)
    return {**result.to_dict(), **scored, "plain_int8_agreement": plain, "held_out_images": goal.images,
            "ranked_by": ranked_by,
            "latency_ms": {"plain_int8": result.steps[0].extra.get("ms_per_image"),
                           "chosen": result.chosen.extra.get("ms_per_image")}}


Measured = tuple[float, dict[str, Any]]  # agreement, and anything else worth recording (latency)


def keep_float_until(ranking: Sequence[Ranked], quantise: Callable[[list[str]], Candidate],
                     measure: Callable[[Candidate], Measured], target: float, *, max_kept: int | None = None,
                     progress: Callable[[str], None] = lambda message: None) -> ControlResult[Candidate]:
    """The layers of ``ranking`` (worst first) to keep float so that agreement reaches ``target``:
    the shortest prefix that meets it (bisection), less each of its layers the target holds without.

    ``quantise(names)`` builds a candidate with those layers float; ``measure(candidate)`` gives
    its score (0..1: agreement, or a task metric) and extras. At most ``max_kept`` layers are kept (default: all).
    """
    if not target <= 1:  # <= 0: a task metric's drop allowance larger than PyTorch's score, met by plain int8
        raise ValueError(f"target score must be at most 1, got {target}")
    ranked = list(ranking)
    names = [r.name for r in ranked]
    limit = len(ranked) if max_kept is None else max(0, min(max_kept, len(ranked)))
    measured: dict[tuple[str, ...], tuple[Candidate, Step]] = {}
    steps: list[Step] = []

    def trial(kept: list[str], dropped: str | None = None) -> float:
        key = tuple(kept)
        if key not in measured:
            what = f", without {dropped}" if dropped else ""
            progress(f"accuracy control: {len(kept)} layer(s) in float{what}")
            started = time.perf_counter()
            candidate = quantise(list(kept))
            agreement, extra = measure(candidate)
            steps.append(Step(len(kept), agreement, time.perf_counter() - started,
                              {**({"dropped": dropped} if dropped else {}), **extra}))
            measured[key] = (candidate, steps[-1])
            progress(f"accuracy control: {len(kept)} layer(s) in float{what} -> agreement {agreement:.4f}")
        return measured[key][1].agreement

    def result(kept: list[str], met: bool) -> ControlResult[Candidate]:
        candidate, step = measured[tuple(kept)]
        step.chosen = True
        return ControlResult(target, met, kept, step.agreement, candidate, ranked, steps)

    if trial([]) >= target:
        return result([], True)
    if limit == 0 or trial(names[:limit]) < target:
        best = max(measured, key=lambda k: (measured[k][1].agreement, -len(k)))
        return result(list(best), False)
    failing, meeting = 0, limit  # invariant: the prefix of `failing` layers falls short, that of `meeting` meets
    while meeting - failing > 1:
        middle = (failing + meeting) // 2
        if trial(names[:middle]) >= target:
            meeting = middle
        else:
            failing = middle
    kept = names[:meeting]
    cost = {r.name: r.cost for r in ranked}
    # the costliest first, while the rest of the prefix is still float to make up for it; among
    # equal costs, the least harmful first: the likeliest not to be needed
    for name in sorted(kept, key=lambda n: (-cost[n], -kept.index(n))):
        if trial([k for k in kept if k != name], dropped=name) >= target:
            kept = [k for k in kept if k != name]
    return result(kept, True)


__all__ = ["NEAR_TIE_SHARE", "ControlOptions", "ControlResult", "Measured", "NearTies", "Outcome", "Ranked",
           "Step", "check_control", "control_details", "control_goal", "control_images", "control_split",
           "keep_float_until", "margin_lost", "near_ties", "outcome", "ranked_by", "split_holdout", "spread"]
