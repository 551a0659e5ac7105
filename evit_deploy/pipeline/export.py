"""A checkpoint becomes an artifact here: card, recipe, target, staging, manifest written last."""
from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from evit_deploy.bundle import Bundle, bundle_path, write_bundle
from evit_deploy.configs import Recipe, load_recipe
from evit_deploy.contracts import CALIBRATION_NEEDED, ExportContext, ExportOutput
from evit_deploy.data import CalibrationImages, list_images
from evit_deploy.errors import CheckFailed, RuntimeMissing, UsageError
from evit_deploy.labelled.scoring import HEADLINE, LabelledScore, open_task_data
from evit_deploy.manifest import (
    MANIFEST_SUFFIX,
    FileEntry,
    Manifest,
    SourceWeights,
    manifest_path_for,
    publish,
    sha256_path,
    size_of,
    staging_dir,
)
from evit_deploy.memory import check_card_fits
from evit_deploy.pipeline.graphs import export_graphs, named_dims, selected
from evit_deploy.requests import ExportRequest
from evit_deploy.spec import InputSpec, Precision
from evit_deploy.targets.base import Target, get_target

Progress = Callable[[str], None]


@dataclass
class ExportResult:
    """What an export wrote. A several-graph export: ``artifact`` is the bundle, ``graphs`` each graph's result."""

    artifact: Path
    manifest_path: Path
    manifest: Manifest
    seconds: float
    graphs: dict[str, ExportResult] = field(default_factory=dict)
    bundle: Bundle | None = None


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
    model_options, target_options = _split_options(card, {**recipe.model_options, **recipe.options}, request.graphs)
    recipe = recipe.model_copy(update={"options": target_options, "model_options": model_options})
    target = get_target(recipe.target)
    target.check_recipe(recipe)
    target.check_dims(recipe, named_dims(card, request.graphs))
    # the manifest records the options as made: validated, typed, defaults filled in
    recipe = recipe.model_copy(update={"options": target.options(recipe).model_dump(mode="json")})
    _check_calibration(recipe)
    _check_task_data(card, recipe)
    if recipe.precision == Precision.INT8:
        fed = [g.name for g in selected(card, request.graphs) if any(t.feed != "image" for t in g.inputs)]
        if fed:
            raise UsageError(f"int8 calibrates from images, and graph(s) {', '.join(fed)} of {card.name} take other "
                             "inputs; export them at fp16/fp32, or pick the image graphs with --graph")
    reason = target.available()
    if reason is not None:
        raise RuntimeMissing(f"target {target.name!r} cannot export here: {reason}")
    spec = card.input_spec(recipe.resolution, recipe.batch, recipe.dynamic)
    if not card.graphs:  # a several-graph model's sizes are fixed by its card
        check_card_fits(card, spec.shape)
    return PreparedExport(request, card, recipe, target, spec)


def export_here(request: ExportRequest, *, progress: Progress = lambda message: None) -> ExportResult:
    """Checkpoint -> artifact(s) + manifest(s) in ``request.out``, on this machine.

    Every graph is exported into one staging folder first; only when all succeeded are they
    published, each with its manifest, and (several graphs) the bundle last.
    """
    from evit_deploy import zoo

    plan = prepare(request)
    card, recipe, backend, spec = plan.card, plan.recipe, plan.target, plan.spec
    stem = request.name or card.name
    started = time.perf_counter()
    with staging_dir(request.out) as workdir:
        progress(f"building {card.name}")
        module = zoo.create_model(card.name, request.weights, seed=request.seed)
        graphs = export_graphs(card, module, spec, dynamic=recipe.dynamic, options=recipe.model_options,
                               graphs=request.graphs)
        staged = []
        for graph in graphs:
            ctx = ExportContext(
                model_name=f"{stem}.{graph.name}" if graph.name else stem,
                task=card.task,
                classes=list(card.classes),
                workdir=workdir,
                graph=graph.io,
                calibration=_calibration_source(recipe),
                task_data=_task_data_source(card, recipe),
                progress=progress,
            )
            progress(f"exporting {ctx.model_name} to {backend.name} ({recipe.precision})")
            result = backend.export(graph.module, spec, recipe, ctx)
            staged.append((graph.name, result, _manifest(plan, graph.name, result, started,
                                                         bundle=f"{stem}{MANIFEST_SUFFIX}" if graph.name else None)))
        published = {name: (publish(result.files, request.out, manifest), manifest)
                     for name, result, manifest in staged}
    results = {name or "": ExportResult(artifact, manifest_path_for(artifact), manifest, manifest.export_seconds)
               for name, (artifact, manifest) in published.items()}
    failed = [(results[name or ""].artifact, result.failure) for name, result, _ in staged if result.failure]
    if failed:  # published all the same (the best the export found), under the name the target gave it
        raise CheckFailed("; ".join(f"{reason}; the best artifact is kept as {path}" for path, reason in failed))
    if len(results) == 1 and "" in results:
        progress(f"wrote {results[''].artifact}")
        return results[""]
    path = bundle_path(request.out, stem)
    bundle = write_bundle(path, {name: (r.artifact, r.manifest) for name, r in results.items()}, recipe)
    progress(f"wrote {path}")
    first = next(iter(results.values()))
    return ExportResult(path, path, first.manifest, round(time.perf_counter() - started, 3), graphs=results,
                        bundle=bundle)


def _manifest(plan: PreparedExport, graph: str | None, result: ExportOutput, started: float,
              bundle: str | None) -> Manifest:
    weights, request = plan.request.weights, plan.request
    return Manifest(
        model=plan.card.name,
        task=plan.card.task,
        target=plan.target.name,
        precision=plan.recipe.precision,
        files=[FileEntry(path=f.name, sha256=sha256_path(f), bytes=size_of(f)) for f in result.files],
        input=plan.spec,
        inputs=result.inputs,
        outputs=result.outputs,
        recipe=plan.recipe,
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
        graph=graph,
        bundle=bundle,
    )


def _split_options(card: Any, given: dict[str, Any], graphs: list[str] | None) -> tuple[dict[str, bool], dict[str, Any]]:
    """A several-graph model's own flags (its card's graph ``options``, e.g. SAM's ``--single-mask``)
    apart from the target's; the model's are on/off switches."""
    known = {name for graph in selected(card, graphs) for name in graph.options}
    for key in given:
        if key in {name for graph in card.graphs for name in graph.options} and key not in known:
            raise UsageError(f"--{key.replace('_', '-')} changes a graph of {card.name} that --graph leaves out")
    model: dict[str, bool] = {}
    for key in [k for k in given if k in known]:
        value = given[key]
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            value = value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise UsageError(f"--{key.replace('_', '-')} is a switch of {card.name}: give it alone "
                             f"(or --no-{key.replace('_', '-')}), not {value!r}")
        model[key] = value
    return model, {k: v for k, v in given.items() if k not in known}


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


def _check_task_data(card: Any, recipe: Recipe) -> None:
    """``--data`` only with ``--max-drop``, and opened now (layout, classes, labels readable) so a bad
    dataset is refused before anything is exported."""
    if recipe.data.source is None:
        return
    if recipe.options.get("max_drop") is None:
        raise UsageError("--data is the labelled data --max-drop scores int8 candidates on: add --max-drop D "
                         "(points of mIoU / top-1 an int8 export may lose), or drop --data")
    if card.task not in HEADLINE:
        raise UsageError(f"--max-drop scores mIoU or top-1 on labelled data, and {card.name} is a {card.task} model: "
                         "control its int8 with --min-agreement instead")
    _open_task_data(card, recipe, card.input_spec(recipe.resolution, 1, False))


def _open_task_data(card: Any, recipe: Recipe, spec: InputSpec) -> LabelledScore:
    data = recipe.data
    assert data.source is not None
    return open_task_data(data.source, card, (spec.height, spec.width), format=data.format, limit=data.limit,
                          classes=data.classes)


def _task_data_source(card: Any, recipe: Recipe) -> Callable[[InputSpec], LabelledScore] | None:
    if recipe.data.source is None:
        return None
    return lambda spec: _open_task_data(card, recipe, spec)


def _calibration_source(recipe: Recipe) -> Callable[[InputSpec], CalibrationImages] | None:
    calib = recipe.calibration
    if calib.source is None:
        return None
    source = calib.source
    samples = min(calib.samples, len(list_images(source)))
    return lambda spec: CalibrationImages(source, spec.with_resolution(spec.height, spec.width, batch=1), samples)
