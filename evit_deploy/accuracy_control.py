"""Accuracy-controlled quantisation: keep the most harmful quantised layers in float until an
agreement target is met.

Target-neutral on purpose: a backend hands in its layers ranked worst first, a callable that
quantises with a given set of layers kept float, and one that measures the agreement of such
a candidate with the float model (on images the quantisation ranges were not taken from). This
module decides how many of the ranked layers to keep: none if plain int8 already meets the
target; otherwise the shortest prefix of the ranking that meets it, found by bisection (a
handful of quantisations instead of one per layer), checked again at the end. When even the
longest prefix allowed (``max_kept``) falls short, the best candidate seen is returned with
``met=False``: the caller keeps it under a name that says so and exits 1.

Why a prefix and bisection: more layers in float never makes int8 worse by much, so agreement
is close to monotone in the prefix length; where it is not, the answer is still a measured
candidate that meets the target, only perhaps not the shortest. Every candidate measured is
in ``steps`` (the agreement/latency curve the report plots).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

Candidate = TypeVar("Candidate")


@dataclass(frozen=True)
class Ranked:
    """A quantised layer the backend may keep float, with its measured harm (higher: worse)."""

    name: str
    score: float


@dataclass(frozen=True)
class Step:
    """One measured candidate: the first ``kept`` layers of the ranking in float."""

    kept: int
    agreement: float
    seconds: float  # quantising and measuring it (the measuring part includes inference)
    extra: dict[str, Any] = field(default_factory=dict)  # what the backend measured beside agreement

    def to_dict(self) -> dict[str, Any]:
        return {"kept_float": self.kept, "agreement": self.agreement, "seconds": round(self.seconds, 2),
                **self.extra}


@dataclass
class ControlResult(Generic[Candidate]):
    target: float
    met: bool
    kept: list[str]  # the layers kept float, worst first
    agreement: float  # of the returned candidate, on the held-out images
    candidate: Candidate
    ranking: list[Ranked]
    steps: list[Step]

    @property
    def reason(self) -> str | None:
        """One line on why the target was not met (None when it was)."""
        if self.met:
            return None
        return (f"agreement {self.agreement:.4f} < --min-agreement {self.target:g} even with the "
                f"{len(self.kept)} most harmful of {len(self.ranking)} quantised layers in float")

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "met": self.met, "agreement": self.agreement, "kept_float": self.kept,
                "ranking": [{"layer": r.name, "score": r.score} for r in self.ranking],
                "steps": [s.to_dict() for s in sorted(self.steps, key=lambda s: s.kept)]}


Measured = tuple[float, dict[str, Any]]  # agreement, and anything else worth recording (latency)


def keep_float_until(ranking: Sequence[Ranked], quantise: Callable[[list[str]], Candidate],
                     measure: Callable[[Candidate], Measured], target: float, *, max_kept: int | None = None,
                     progress: Callable[[str], None] = lambda message: None) -> ControlResult[Candidate]:
    """The shortest prefix of ``ranking`` (worst first) kept float that meets ``target``.

    ``quantise(names)`` builds a candidate with those layers float; ``measure(candidate)`` gives
    its agreement (0..1) and extras. At most ``max_kept`` layers are kept (default: all).
    """
    if not 0 < target <= 1:
        raise ValueError(f"target agreement must be in (0, 1], got {target}")
    ranked = list(ranking)
    limit = len(ranked) if max_kept is None else max(0, min(max_kept, len(ranked)))
    candidates: dict[int, tuple[Candidate, float]] = {}
    steps: list[Step] = []

    def trial(count: int) -> float:
        if count not in candidates:
            progress(f"accuracy control: {count} layer(s) in float")
            started = time.perf_counter()
            candidate = quantise([r.name for r in ranked[:count]])
            agreement, extra = measure(candidate)
            steps.append(Step(count, agreement, time.perf_counter() - started, extra))
            candidates[count] = (candidate, agreement)
            progress(f"accuracy control: {count} layer(s) in float -> agreement {agreement:.4f}")
        return candidates[count][1]

    def result(count: int, met: bool) -> ControlResult[Candidate]:
        candidate, agreement = candidates[count]
        return ControlResult(target, met, [r.name for r in ranked[:count]], agreement, candidate, ranked, steps)

    if trial(0) >= target:
        return result(0, True)
    if limit == 0 or trial(limit) < target:
        best = max(candidates, key=lambda k: (candidates[k][1], -k))
        return result(best, False)
    failing, meeting = 0, limit  # invariant: trial(failing) < target <= trial(meeting)
    while meeting - failing > 1:
        middle = (failing + meeting) // 2
        if trial(middle) >= target:
            meeting = middle
        else:
            failing = middle
    return result(meeting, True)


__all__ = ["ControlResult", "Measured", "Ranked", "Step", "keep_float_until"]
