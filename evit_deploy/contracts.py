"""The shapes every backend fills in: export context and output, runner, per-layer timing.

They live one floor below ``targets/`` so the backend packages (``onnx/``, ``tflite/``,
``coreml/``, ``trt/``), ``profiling`` and ``remote/`` all import them downward. Nothing here
imports torch or a runtime: a device runs artifacts with numpy and its runtime alone.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict

from evit_deploy.errors import UsageError
from evit_deploy.spec import GraphIO, InputSpec, Layout, TensorInfo, to_layout

if TYPE_CHECKING:
    from typing_extensions import Self


class TargetOptions(BaseModel):
    """Per-target recipe options; each target subclasses this with its own fields."""

    model_config = ConfigDict(extra="forbid")


def comma_list(value: Any) -> Any:
    """A list option as the CLI gives it: ``--keep-fp32 attention,resize``, or ``none`` for []."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list) and len(value) == 1 and str(value[0]).lower() == "none":
        return []
    return value


CALIBRATION_NEEDED = "int8 needs calibration images: pass --calib DIR (a folder of representative images)"


class Images(Protocol):
    """Calibration inputs: NCHW batches, re-iterable and counted, read lazily (never all in memory)."""

    def __iter__(self) -> Iterator[np.ndarray]: ...

    def __len__(self) -> int: ...


Predict = Callable[[np.ndarray], np.ndarray]  # one (1, 3, H, W) NCHW image -> its logits, classes on axis 1


class TaskData(Protocol):
    """Labelled images and their task metric: what ``--max-drop`` holds an int8 candidate to.

    The candidate is handed in as ``predict``, so a backend runs it in its own runtime and layout,
    and the images (read and preprocessed lazily, every call: a validation set need not fit in
    memory) never leave this object.
    """

    metric: str  # the headline metric's name: "mIoU", "top-1"

    def __len__(self) -> int: ...

    def score(self, predict: Predict) -> float:
        """The metric of ``predict``'s logits over every labelled image, 0..1."""
        ...


@dataclass
class ExportContext:
    """What a target's export needs besides the module: where to write, what to report."""

    model_name: str  # the artifact's file stem (a graph of a several-graph model: MODEL.GRAPH)
    task: str
    classes: list[str]
    workdir: Path  # a private staging folder; the caller moves results into place
    graph: GraphIO  # the tensors to export: names, sizes, dynamic dims
    calibration: Callable[[InputSpec], Images] | None = None
    task_data: Callable[[InputSpec], TaskData] | None = None  # the labelled data of --max-drop, at spec's size
    progress: Callable[[str], None] = lambda message: None

    @property
    def image_graph(self) -> bool:
        """One input, the preprocessed image: what calibration, image inputs and NHWC apply to."""
        return len(self.graph.inputs) == 1 and len(self.graph.inputs[0].shape) == 4 and \
            self.graph.inputs[0].shape[1] == 3

    def calibration_batches(self, spec: InputSpec) -> Images:
        """The calibration images preprocessed for ``spec``'s size, one (1, 3, H, W) array each, read
        lazily as they are iterated."""
        if self.calibration is None:
            raise UsageError(CALIBRATION_NEEDED)
        images = self.calibration(spec.with_resolution(spec.height, spec.width, batch=1))
        if not images:
            raise UsageError("the calibration source gave no images; pass --calib DIR with representative images")
        return images


@dataclass
class ExportOutput:
    """The files a target wrote into ``workdir`` (the first is the primary artifact)."""

    files: list[Path]
    converter: dict[str, str] = field(default_factory=dict)  # package -> version
    outputs: list[TensorInfo] = field(default_factory=list)
    inputs: list[TensorInfo] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # target-specific manifest section
    # a check the export itself ran and failed (e.g. an unreachable --min-agreement): the files are
    # still published, under a name that says so, and the export ends with this line, exit 1
    failure: str | None = None


@dataclass
class ArtifactFacts:
    """What an artifact says about itself (its embedded metadata, its own tensors), to hold against
    its manifest: a manifest edited after export must not steer verify or profile."""

    task: str | None = None
    precision: str | None = None
    inputs: list[TensorInfo] = field(default_factory=list)


@dataclass
class LayerTiming:
    """One row of a per-operator profile."""

    name: str
    op_type: str
    total_ms: float
    calls: int
    share: float  # of the summed operator time


class AmbiguousOutputs(dict):  # type: ignore[type-arg]
    """A reference's outputs for an input where its own arithmetic could have given others.

    ``alternatives`` are those other outputs (same names), each as legitimate as this one;
    ``reasons`` say where the ambiguity sits (one line each). A comparator judges an artifact
    against whichever of them its output is closest to, and says so.
    """

    def __init__(self, outputs: dict[str, np.ndarray], alternatives: list[dict[str, np.ndarray]],
                 reasons: list[str]) -> None:
        super().__init__(outputs)
        self.alternatives = alternatives
        self.reasons = reasons


class Runner(ABC):
    """Loads an artifact and maps named arrays to named arrays.

    Subclasses implement ``load``, ``infer`` and declare ``inputs``/``outputs``;
    ``run`` converts from and to evit's canonical layout (NCHW) so callers never
    special-case a runtime.
    """

    backend: ClassVar[str] = "runner"
    # Which of the recipe's criteria ``verify`` holds this runner to: None for the precision's own,
    # else a ``runtime_tolerances`` profile (e.g. "accelerated": Core ML on GPU/ANE computes in fp16).
    tolerance_profile: str | None = None

    def __init__(self) -> None:
        self.inputs: list[TensorInfo] = []
        self.outputs: list[TensorInfo] = []

    @abstractmethod
    def load(self) -> None:
        """Load the artifact; called once by ``__enter__``."""

    @abstractmethod
    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once on arrays already in this runner's declared layouts and dtypes."""

    def close(self) -> None:
        """Release the runtime's resources."""

    def describe(self) -> dict[str, Any]:
        """Which runtime ran, for reports (name, version, device, options)."""
        return {"backend": self.backend}

    def per_layer(self, feed: dict[str, np.ndarray], iters: int) -> list[LayerTiming]:
        raise UsageError(f"--per-layer is not supported by the {self.backend} runner")

    def __enter__(self) -> Self:
        self.load()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def prepare(self, feed: dict[str, np.ndarray], layout: Layout = "NCHW") -> dict[str, np.ndarray]:
        """Canonical arrays -> this runner's layouts and dtypes."""
        prepared = {}
        for info in self.inputs:
            if info.name not in feed:
                raise UsageError(f"input {info.name!r} missing; the artifact takes {[i.name for i in self.inputs]}")
            array = to_layout(feed[info.name], layout, info.layout)
            prepared[info.name] = array.astype(info.dtype, copy=False)
        return prepared

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Canonical (NCHW, float32) in, canonical out."""
        raw = self.infer(self.prepare(feed))
        layouts = {o.name: o.layout for o in self.outputs}
        return {
            name: to_layout(np.asarray(value), layouts.get(name, "NCHW"), "NCHW").astype(np.float32, copy=False)
            for name, value in raw.items()
        }
