"""``evaluate``: the task metric of an artifact and of its PyTorch reference on labelled data.

Both run on the very same preprocessed tensors, image by image, so the difference between the
two columns is what the export (precision, converter, runtime) costs on the user's data. A zoo
model name instead of an artifact evaluates PyTorch alone. Nothing is printed here: the result
is data (``EvalResult``), rendered by ``evaluation.render``.
"""
from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evit_deploy.errors import UsageError
from evit_deploy.labelled.datasets import Dataset, open_dataset
from evit_deploy.labelled.metrics import Scores
from evit_deploy.labelled.protocol import Protocol, load_rgb, paper_protocol, protocol_at
from evit_deploy.labelled.scoring import HEADLINE, METRIC_NAMES, new_metric, update_metric
from evit_deploy.requests import EvalRequest

Progress = Callable[[str], None]
OnImage = Callable[[int, int], None]
ARTIFACT_SUFFIXES = (".onnx", ".tflite", ".mlpackage", ".engine", ".plan")


@dataclass
class EvalResult:
    """Scores of the artifact and of its PyTorch reference on one dataset (percentages)."""

    model: str
    task: str
    source: str  # the artifact's path, or the zoo model's name
    target: str  # the artifact's target; "torch" for a model name
    precision: str
    data: str
    format: str
    classes: list[str]
    images: int
    protocol: dict[str, Any]
    reference: Scores | None
    artifact: Scores | None
    published: float | None = None  # the card's figure for the headline metric (full val set, paper protocol)
    runner: dict[str, Any] = field(default_factory=dict)
    reference_info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def headline(self) -> str:
        """The metric ``--max-drop`` bounds: mIoU for segmentation, top-1 for classification."""
        return HEADLINE[self.task]

    def difference(self) -> dict[str, float | None]:
        """artifact - reference, per metric (None where either is undefined or absent)."""
        if self.reference is None or self.artifact is None:
            return {}
        out: dict[str, float | None] = {}
        for name, ref in self.reference.metrics.items():
            art = self.artifact.metrics.get(name)
            out[name] = None if ref is None or art is None else art - ref
        return out

    @property
    def drop(self) -> float | None:
        """How many points of the headline metric the artifact loses against PyTorch (negative: gains)."""
        if self.reference is None or self.artifact is None:
            return None
        ref, art = self.reference.metrics.get(self.headline), self.artifact.metrics.get(self.headline)
        return None if ref is None or art is None else ref - art

    def drop_failure(self, max_drop: float) -> str | None:
        """The line that explains a drop beyond ``max_drop`` points, else None."""
        drop = self.drop
        if drop is None or drop <= max_drop:
            return None
        assert self.reference is not None and self.artifact is not None
        name = METRIC_NAMES[self.headline]
        return (f"{name} dropped {drop:.2f} points (PyTorch {self.reference.metrics[self.headline]:.2f} -> "
                f"{Path(self.source).name} {self.artifact.metrics[self.headline]:.2f}), more than --max-drop "
                f"{max_drop:g}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "task": self.task, "source": self.source, "target": self.target,
            "precision": self.precision, "data": self.data, "format": self.format, "images": self.images,
            "headline": self.headline, "published": self.published, "protocol": self.protocol,
            "classes": self.classes,
            "reference": self.reference.to_dict() if self.reference else None,
            "artifact": self.artifact.to_dict() if self.artifact else None,
            "difference": self.difference(), "drop": self.drop,
            "runner": self.runner, "reference_info": self.reference_info, "notes": self.notes,
            "seconds": round(self.seconds, 3),
        }


def _quiet(message: str) -> None:
    return None


def _no_count(done: int, total: int) -> None:
    return None


@dataclass
class _Source:
    """What is being evaluated: an artifact (with its reference) or a zoo model alone."""

    card: Any
    handle: Any | None  # api.ArtifactHandle
    size: tuple[int, int] | None  # the network input, when fixed


def _open_source(source: str | Path, resolution: tuple[int, int] | None) -> _Source:
    from evit_deploy import api, zoo

    path = Path(source)
    if path.exists():
        handle = api.open_artifact(path)
        spec = handle.spec
        if resolution is not None:
            raise UsageError(f"--resolution is for a zoo model name; {path.name} is evaluated at its exported input")
        return _Source(zoo.get_card(handle.manifest.model), handle, None if spec.dynamic else (spec.height, spec.width))
    if len(path.parts) > 1 or path.suffix in ARTIFACT_SUFFIXES:
        raise UsageError(f"{source}: no such artifact")
    try:
        card = zoo.get_card(str(source))
    except UsageError as err:
        raise UsageError(f"{source}: neither an artifact nor a zoo model ({err})") from None
    return _Source(card, None, resolution)


def evaluate(
    source: str | Path | EvalRequest,
    data: str | Path | None = None,
    *,
    progress: Progress = _quiet,
    on_image: OnImage = _no_count,
    **options: Any,
) -> EvalResult:
    """Score ``source`` (an artifact, or a zoo model name) on the labelled dataset ``data``.

    Options are ``EvalRequest``'s fields (the CLI's flags, checked the same way). An artifact runs
    through its Runner (``device``: cpu/cuda here, or an inventory device over SSH, as ``verify``),
    its PyTorch reference (``weights``, default: those recorded at export) here on the same tensors;
    ``reference=False`` skips the reference. A model name runs in PyTorch alone (``weights``;
    ``resolution`` fixes its input instead of the card's protocol). ``classes``: the masks layout's
    classes YAML, or the imagefolder layout's index file. ``on_image(done, total)`` is called after
    every image.
    """
    from evit_deploy.devices import is_local

    request = source if isinstance(source, EvalRequest) else EvalRequest.parse(source=source, data=data, **options)
    started = time.perf_counter()
    src = _open_source(request.source, request.resolution)
    if src.card.task not in HEADLINE:
        raise UsageError(f"{src.card.name} is a {src.card.task} model: eval scores classifiers and semantic "
                         "segmentation on labelled data; check a SAM export against PyTorch with `evit verify` "
                         "(mask IoU per prompt)")
    if src.handle is None and not is_local(request.device):
        raise UsageError(f"--device {request.device} runs artifacts; export {src.card.name} first, then evaluate the "
                         "artifact")
    dataset = open_dataset(request.data, format=request.format, card=src.card, limit=request.limit,
                           classes_file=request.classes)
    protocol, paper = protocol_at(src.card, src.size), paper_protocol(src.card)
    notes = list(dataset.notes)
    with contextlib.ExitStack() as stack:
        runners, weights_info = _runners(src, request, progress, notes, stack)
        progress(f"evaluating {len(dataset.samples)} image(s)")
        scored = _score(dataset, protocol, paper, src, runners, on_image, notes)
        runner_info = runners["artifact"].describe() if "artifact" in runners else {}
        reference_info = {**runners["reference"].describe(), **weights_info} if "reference" in runners else {}
    manifest = src.handle.manifest if src.handle is not None else None
    published = getattr(src.card.published, HEADLINE[src.card.task], None)
    return EvalResult(
        model=src.card.name, task=src.card.task,
        source=str(src.handle.path) if src.handle is not None else src.card.name,
        target=manifest.target if manifest else "torch", precision=manifest.precision if manifest else "fp32",
        data=str(dataset.root), format=dataset.format, classes=dataset.classes, images=len(dataset.samples),
        protocol=scored.protocol, reference=scored.scores.get("reference"), artifact=scored.scores.get("artifact"),
        published=published, runner=runner_info, reference_info=reference_info,
        notes=notes, seconds=time.perf_counter() - started,
    )


def _runners(src: _Source, request: EvalRequest, progress: Progress, notes: list[str],
             stack: contextlib.ExitStack) -> tuple[dict[str, Any], dict[str, Any]]:
    """Loaded runners by role ("artifact", "reference"), entered on ``stack``, and where the reference's
    weights came from. The artifact's runner comes first, so a device that cannot be reached fails before
    the reference is built."""
    from evit_deploy import api
    from evit_deploy.pipeline.reference import reference_model
    from evit_deploy.targets.torch_ref import TorchRunner

    runners: dict[str, Any] = {}
    threads = request.threads
    if src.handle is not None:
        runners["artifact"] = stack.enter_context(api.artifact_runner(src.handle, request.device, threads=threads,
                                                                       inventory=request.inventory,
                                                                       progress=progress))
        if not request.reference:
            return runners, {}
        progress("building the PyTorch reference")
        model, info, weight_notes = reference_model(src.handle.manifest, request.weights)
        notes += weight_notes
        spec = src.handle.spec
        names = [o.name for o in src.handle.manifest.outputs] or ["logits"]
    else:
        model, info = _zoo_model(src.card, request.weights, request.seed, notes)
        spec = src.card.input_spec(src.size)
        names = [src.card.output.name]
    runners["reference"] = stack.enter_context(TorchRunner(model, spec, threads=threads, output_names=names))
    return runners, info


def _zoo_model(card: Any, weights: Path | None, seed: int, notes: list[str]) -> tuple[Any, dict[str, Any]]:
    from evit_deploy import zoo
    from evit_deploy.manifest import sha256_path

    if weights is None:
        notes.append(f"{card.name} has random weights (seed {seed}): its scores say nothing about the model; "
                     "pass --weights")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", zoo.RandomWeightsWarning)
            return zoo.create_model(card, None, seed=seed), {"weights": None, "seed": seed}
    return zoo.create_model(card, weights, seed=seed), {"weights": str(weights), "sha256": sha256_path(weights)}


@dataclass
class _Scored:
    scores: dict[str, Scores]
    protocol: dict[str, Any]


def _score(dataset: Dataset, protocol: Protocol, paper: Protocol, src: _Source, runners: dict[str, Any],
           on_image: OnImage, notes: list[str]) -> _Scored:
    """Stream every sample through every runner into one metric per runner."""
    segmentation = dataset.task == "segmentation"
    metrics = {role: new_metric(dataset) for role in runners}
    spec = src.handle.spec if src.handle is not None else None
    off_protocol, nonfinite, total = 0, 0, len(dataset.samples)
    fed: set[tuple[int, int]] = set()
    for done, sample in enumerate(dataset.samples, start=1):
        labels = dataset.read_labels(sample) if segmentation else None
        image = load_rgb(sample.image)
        height, width = image.height, image.width
        tensor = protocol.prepare(image)
        fed.add(tuple(tensor.shape[2:]))
        off_protocol += tensor.shape[2:] != paper.input_size(height, width)
        if spec is not None and not spec.dynamic and spec.batch > 1:
            tensor = np.repeat(tensor, spec.batch, axis=0)  # a static batch: score the first copy
        for role, runner in runners.items():
            output = runner.run({runner.inputs[0].name: tensor})
            logits = next(iter(output.values()))[0]
            if role == "artifact":
                nonfinite += int((~np.isfinite(logits)).sum())
            update_metric(metrics[role], logits, sample, labels)
        on_image(done, total)
    if nonfinite:
        notes.append(f"the artifact produced {nonfinite} non-finite logit(s); they never win the argmax")
    if off_protocol:
        why = "the artifact's fixed input" if src.handle is not None else "--resolution"
        sizes = ", ".join(f"{h}x{w}" for h, w in sorted(fed))
        notes.append(f"protocol differs from the paper's: {off_protocol} of {total} image(s) were fed at {sizes} "
                     f"({why}) instead of the paper's {paper.describe()}; figures are not comparable with "
                     "published ones")
    described = {"input": protocol.describe(), "paper": paper.describe(), "matches_paper": off_protocol == 0,
                 "images_off_protocol": off_protocol}
    if segmentation:
        described["prediction"] = "logits upsampled bicubic (align_corners=False) to the label size, then argmax"
    return _Scored({role: metric.scores() for role, metric in metrics.items()}, described)

