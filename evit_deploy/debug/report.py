"""What ``evit debug`` found, as data: per layer the error it carries and the error it adds."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from evit_deploy.debug.metrics import TensorErrors, json_float


@dataclass
class LayerResult:
    """One mapped module: its output's error (inherited + own) and, run alone, its own."""

    module: str
    cls: str  # class name without its package
    tensor: str  # the artifact tensor compared
    order: int  # depth: position of the producing op in the artifact
    errors: TensorErrors = field(default_factory=TensorErrors)
    alone: TensorErrors | None = None  # fed the reference's inputs: the error this layer adds
    alone_note: str | None = None  # why it could not run alone

    @property
    def added(self) -> float | None:
        """Relative L2 error of the layer run alone on the reference's inputs."""
        return None if self.alone is None else self.alone.rel_l2

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"module": self.module, "class": self.cls, "tensor": self.tensor, "order": self.order,
                                **self.errors.to_dict()}
        data["added"] = None if self.alone is None else self.alone.to_dict()
        if self.alone_note:
            data["alone_note"] = self.alone_note
        return data


@dataclass
class DebugReport:
    """Layers in depth order, the first over the threshold, and the largest added errors."""

    artifact: str
    model: str
    target: str
    precision: str
    threshold: float
    layers_mode: str
    samples: int
    input_source: str
    layers: list[LayerResult]
    output: TensorErrors  # the instrumented run's final output
    deployed_output: TensorErrors  # the artifact's own runner, as verify runs it
    runner: dict[str, Any] = field(default_factory=dict)
    map_source: str = ""
    skipped: list[str] = field(default_factory=list)  # mapped modules not compared, with why
    notes: list[str] = field(default_factory=list)

    @property
    def first_divergent(self) -> LayerResult | None:
        """The first layer, in depth order, whose error is over the threshold (or not finite)."""
        return next((layer for layer in self.layers if layer.errors.over(self.threshold)), None)

    @property
    def over_threshold(self) -> list[LayerResult]:
        return [layer for layer in self.layers if layer.errors.over(self.threshold)]

    def leaves(self) -> list[LayerResult]:
        """Layers that hold no other compared layer: what a precision choice is made for (a block's
        error alone is the sum of its layers')."""
        paths = [layer.module for layer in self.layers]
        return [layer for layer in self.layers
                if layer.module and not any(p.startswith(layer.module + ".") for p in paths)]

    def top_added(self, count: int = 10) -> list[LayerResult]:
        """The leaf layers that add the most error by themselves, largest first."""
        ranked = [layer for layer in self.leaves() if layer.added is not None]
        ranked.sort(key=lambda layer: _sort_value(layer.added), reverse=True)
        return ranked[:count]

    def to_dict(self) -> dict[str, Any]:
        first = self.first_divergent
        return {
            "artifact": self.artifact,
            "model": self.model,
            "target": self.target,
            "precision": self.precision,
            "threshold": self.threshold,
            "layers_mode": self.layers_mode,
            "samples": self.samples,
            "inputs": self.input_source,
            "runner": self.runner,
            "map_source": self.map_source,
            "first_divergent": None if first is None else first.module,
            "over_threshold": len(self.over_threshold),
            "top_added": [{"module": layer.module, "added_rel_l2": json_float(layer.added or 0.0)}
                          for layer in self.top_added()],
            "output": self.output.to_dict(),
            "deployed_output": self.deployed_output.to_dict(),
            "layers": [layer.to_dict() for layer in self.layers],
            "skipped": self.skipped,
            "notes": self.notes,
        }


def _sort_value(value: float | None) -> float:
    if value is None:
        return -1.0
    return math.inf if math.isnan(value) else value
