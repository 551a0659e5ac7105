"""A checkpoint becomes an artifact here: card, recipe, target, staging, manifest written last."""
from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from evit_deploy.configs import Recipe, load_recipe
from evit_deploy.contracts import CALIBRATION_NEEDED, ExportContext
from evit_deploy.data import input_batches, list_images
from evit_deploy.errors import RuntimeMissing, UsageError
from evit_deploy.manifest import (
    FileEntry,
    Manifest,
    SourceWeights,
    manifest_path_for,
    publish,
    sha256_path,
    size_of,
    staging_dir,
)
from evit_deploy.requests import ExportRequest
from evit_deploy.spec import InputSpec, Precision
from evit_deploy.targets.base import Target, get_target

Progress = Callable[[str], None]


@dataclass
class ExportResult:
    artifact: Path
    manifest_path: Path
    manifest: Manifest
    seconds: float


@dataclass
class PreparedExport:
    """Everything decided and checked before a byte is written: the recipe, the target, the input."""

    request: ExportRequest
    card: Any
    recipe: Recipe
    target: Target
    spec: InputSpec


def prepare(request: ExportRequest) -> PreparedExport:
    """Validate the whole export (model, recipe, target options, calibration, installs) up front."""
    from evit_deploy import zoo

    card = zoo.get_card(request.model)
    recipe = load_recipe(request.config, request.overrides())
    target = get_target(recipe.target)
    target.check_recipe(recipe)
    # the manifest records the options as made: validated, typed, defaults filled in
    recipe = recipe.model_copy(update={"options": target.options(recipe).model_dump(mode="json")})
    _check_calibration(recipe)
    reason = target.available()
    if reason is not None:
        raise RuntimeMissing(f"target {target.name!r} cannot export here: {reason}")
    return PreparedExport(request, card, recipe, target, card.input_spec(recipe.resolution, recipe.batch,
                                                                         recipe.dynamic))


def export_here(request: ExportRequest, *, progress: Progress = lambda message: None) -> ExportResult:
    """Checkpoint -> artifact + manifest in ``request.out``, on this machine."""
    from evit_deploy import zoo

    plan = prepare(request)
    card, recipe, backend, spec = plan.card, plan.recipe, plan.target, plan.spec
    weights = request.weights
    started = time.perf_counter()
    with staging_dir(request.out) as workdir:
        progress(f"building {card.name}")
        module = zoo.create_model(card.name, weights, seed=request.seed)
        ctx = ExportContext(
            model_name=request.name or card.name,
            task=card.task,
            classes=list(card.classes),
            workdir=workdir,
            calibration=_calibration_source(recipe),
            progress=progress,
        )
        progress(f"exporting to {backend.name} ({recipe.precision})")
        result = backend.export(module, spec, recipe, ctx)
        manifest = Manifest(
            model=card.name,
            task=card.task,
            target=backend.name,
            precision=recipe.precision,
            files=[FileEntry(path=f.name, sha256=sha256_path(f), bytes=size_of(f)) for f in result.files],
            input=spec,
            inputs=result.inputs,
            outputs=result.outputs,
            recipe=recipe,
            weights=SourceWeights(
                path=str(weights.resolve()) if weights else None,
                sha256=sha256_path(weights) if weights else None,
                seed=request.seed,
            ),
            versions=_versions(result.converter),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            export_seconds=round(time.perf_counter() - started, 3),
            notes=result.notes,
            details=result.details,
        )
        artifact = publish(result.files, request.out, manifest)
    progress(f"wrote {artifact}")
    return ExportResult(artifact, manifest_path_for(artifact), manifest, manifest.export_seconds)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _versions(converter: dict[str, str]) -> dict[str, str]:
    versions = {"evit-deploy": _version("evit-deploy") or "unknown", "python": platform.python_version()}
    for package in ("torch", "numpy"):
        versions[package] = _version(package) or "unknown"
    versions.update(converter)
    return versions


def _check_calibration(recipe: Recipe) -> None:
    """int8 needs its full calibration set; other precisions use the images only where they help
    (e.g. TensorRT's fp16 overflow check), so any non-empty folder will do for them."""
    calib = recipe.calibration
    int8 = recipe.precision == Precision.INT8
    if int8 and calib.source is None:
        raise UsageError(CALIBRATION_NEEDED)
    if calib.source is not None:
        list_images(calib.source, minimum=calib.samples if int8 else 1)


def _calibration_source(recipe: Recipe) -> Callable[[InputSpec], list[Any]] | None:
    calib = recipe.calibration
    if calib.source is None:
        return None
    source = calib.source
    samples = min(calib.samples, len(list_images(source)))

    def batches(spec: InputSpec) -> list[Any]:
        one = spec.with_resolution(spec.height, spec.width, batch=1)
        return list(input_batches(one, samples=samples, seed=0, source=source))

    return batches
