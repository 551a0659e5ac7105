"""An artifact run with its intermediate tensors exposed: one small interface per runtime.

A ``Capture`` is loaded for a set of artifact tensors, then ``run`` returns them for one
input, and ``run_alone`` runs one mapped module by itself on inputs given from outside (the
reference's), which tells the error a layer adds from the error it inherits. Arrays cross
this interface in evit's canonical layout (NCHW, float32): each capture converts to and
from its runtime's layout and dtypes, dequantising where the runtime holds int8.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from typing_extensions import Self

    from evit_deploy.contracts import Runner
    from evit_deploy.layer_map import LayerEntry


class CannotRunAlone(Exception):
    """This layer cannot be run by itself on this runtime; ``str(err)`` says why."""


class Capture(ABC):
    """Exposes an artifact's intermediate tensors; ``runner`` is the artifact's own runner, which
    ``run_deployed`` uses to tell whether exposing tensors changed what the runtime computes."""

    #: None when ``run_alone`` works on this runtime, else why it cannot (said in the report)
    alone_unsupported: str | None = None

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    @abstractmethod
    def load(self, tensors: Sequence[str]) -> list[str]:
        """Prepare to expose ``tensors``; returns those this runtime cannot expose, each with why."""

    @abstractmethod
    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The exposed tensors (and the outputs) for one input, NCHW float32."""

    def run_alone(self, entry: LayerEntry, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """``entry``'s output computed from ``inputs`` (tensor name -> NCHW array) alone."""
        raise CannotRunAlone(self.alone_unsupported or "not supported")

    def run_deployed(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The outputs of the artifact's own runner, as verify runs it (loaded by ``load``)."""
        return self.runner.run(feed)

    def close(self) -> None:
        self.runner.close()

    def describe(self) -> dict[str, object]:
        return self.runner.describe()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
