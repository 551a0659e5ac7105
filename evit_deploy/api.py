"""``export``, ``verify`` and ``profile``: the Python API the CLI is a thin shell over.

Each function orchestrates the pieces (zoo, recipe, target, parity, profiling) and
returns a result object; nothing here prints. Long steps report through ``progress``
callbacks so the CLI can draw bars and notebooks can stay quiet.
"""
from __future__ import annotations

import contextlib
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from evit_deploy.configs import Recipe, Tolerances, load_recipe
from evit_deploy.data import CalibrationImages, count_inputs, input_batches, list_images
from evit_deploy.errors import RuntimeMissing, UsageError
from evit_deploy.manifest import (
    FileEntry,
    Manifest,
    SourceWeights,
    load_manifest,
    manifest_path_for,
    publish,
    sha256_path,
    size_of,
    staging_dir,
    write_json_atomic,
)
from evit_deploy.parity import Comparator, ParityReport
from evit_deploy.profiling import ProfileResult, measure
from evit_deploy.spec import InputSpec
from evit_deploy.targets.base import ExportContext, Runner, Target, get_target

Progress = Callable[[str], None]


def _quiet(message: str) -> None:
    return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def spec_from_card(card: Any, resolution: tuple[int, int] | None = None, batch: int = 1,
                   dynamic: bool = False) -> InputSpec:
    """The input an export of ``card`` takes, preprocessed as the card says."""
    height, width = resolution or tuple(card.input_size)
    pre = card.preprocessing
    extra = {"task": card.task}
    crop_ratio = getattr(pre, "crop_ratio", None)
    if card.task == "classification" and crop_ratio:
        extra["crop_ratio"] = crop_ratio
    return InputSpec(batch=batch, height=height, width=width, mean=tuple(pre.mean), std=tuple(pre.std),
                     color=getattr(pre, "color", "RGB"), dynamic=dynamic, extra=extra)


@dataclass
class ExportResult:
    artifact: Path
    manifest_path: Path
    manifest: Manifest
    seconds: float


def _require_available(target: Target) -> None:
    reason = target.available()
    if reason is not None:
        raise RuntimeMissing(f"target {target.name!r} cannot export here: {reason}")


def export(
    model: str,
    *,
    target: str | None = None,
    weights: str | Path | None = None,
    config: str | Path | None = None,
    out: str | Path = "out",
    seed: int = 0,
    name: str | None = None,
    progress: Progress = _quiet,
    **overrides: Any,
) -> ExportResult:
    """Checkpoint -> artifact + manifest in ``out``. ``overrides`` are recipe fields."""
    from evit_deploy import zoo

    card = zoo.get_card(model)
    if target is not None:
        overrides["target"] = target
    recipe = load_recipe(config, overrides)
    backend = get_target(recipe.target)
    backend.check_recipe(recipe)
    _check_calibration(recipe)
    _require_available(backend)
    weights_path = Path(weights) if weights is not None else None
    if weights_path is not None and not weights_path.is_file():
        raise UsageError(f"{weights_path}: weights file not found")
    spec = spec_from_card(card, recipe.resolution, recipe.batch, recipe.dynamic)
    out_dir = Path(out)
    started = time.perf_counter()
    with staging_dir(out_dir) as workdir:
        progress(f"building {card.name}")
        module = zoo.create_model(card.name, weights_path, seed=seed)
        ctx = ExportContext(
            model_name=name or card.name,
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
            input=spec.to_dict(),
            inputs=[i.to_dict() for i in result.inputs],
            outputs=[o.to_dict() for o in result.outputs],
            recipe=recipe.model_dump(mode="json"),
            weights=SourceWeights(
                path=str(weights_path.resolve()) if weights_path else None,
                sha256=sha256_path(weights_path) if weights_path else None,
                seed=seed,
            ),
            versions=_versions(result.converter),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            export_seconds=round(time.perf_counter() - started, 3),
            notes=result.notes,
            details=result.details,
        )
        artifact = publish(result.files, out_dir, manifest)
    progress(f"wrote {artifact}")
    return ExportResult(artifact, manifest_path_for(artifact), manifest, manifest.export_seconds)


def _versions(converter: dict[str, str]) -> dict[str, str]:
    versions = {"evit-deploy": _version("evit-deploy") or "unknown", "python": platform.python_version()}
    for package in ("torch", "numpy"):
        versions[package] = _version(package) or "unknown"
    versions.update(converter)
    return versions


def _check_calibration(recipe: Recipe) -> None:
    calib = recipe.calibration
    if recipe.precision == "int8" and calib.source is None:
        raise UsageError("int8 needs calibration images: pass --calib DIR (a folder of representative images)")
    if calib.source is not None:
        list_images(calib.source, minimum=calib.samples)


def _calibration_source(recipe: Recipe) -> Callable[[InputSpec], CalibrationImages] | None:
    calib = recipe.calibration
    if calib.source is None:
        return None
    source, samples = calib.source, calib.samples
    return lambda spec: CalibrationImages(source, spec.with_resolution(spec.height, spec.width, batch=1), samples)


# --------------------------------------------------------------------------- verify


@dataclass
class ArtifactHandle:
    """An artifact with its manifest and target, checked and ready to run."""

    path: Path
    manifest: Manifest
    target: Target

    @property
    def spec(self) -> InputSpec:
        return InputSpec.from_dict(self.manifest.input)

    def runner(self, *, device: str = "cpu", threads: int | None = None) -> Runner:
        reason = self.target.runtime_available(device)
        if reason is not None:
            raise RuntimeMissing(f"cannot run {self.path.name} here: {reason}")
        return self.target.runner(self.manifest, self.path, device=device, threads=threads)


def open_artifact(path: str | Path) -> ArtifactHandle:
    """Load and check an artifact's manifest (refusing incomplete or modified ones)."""
    artifact = Path(path)
    manifest = load_manifest(artifact)
    return ArtifactHandle(artifact, manifest, get_target(manifest.target))


def _run_spec(handle: ArtifactHandle, resolution: tuple[int, int] | None, batch: int | None) -> InputSpec:
    spec = handle.spec
    height, width = resolution or (spec.height, spec.width)
    new_batch = batch or spec.batch
    if not spec.dynamic and ((height, width) != (spec.height, spec.width) or new_batch != spec.batch):
        raise UsageError(
            f"{handle.path.name} was exported with a static input {spec.batch}x3x{spec.height}x{spec.width}; "
            "re-export with --dynamic (and --batch) to run other shapes"
        )
    return spec.with_resolution(height, width, new_batch)


def reference_model(manifest: Manifest, weights: str | Path | None) -> tuple[Any, dict[str, Any], list[str]]:
    """The PyTorch module the artifact must match, and notes on where its weights came from."""

    notes: list[str] = []
    recorded = manifest.weights
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise UsageError(f"{path}: weights file not found")
        digest = sha256_path(path)
        if recorded.sha256 and digest != recorded.sha256:
            notes.append(
                f"--weights {path.name} (sha256 {digest[:12]}…) differ from the weights the artifact was exported "
                f"from ({recorded.sha256[:12]}…): parity is checked against the given weights"
            )
        elif recorded.sha256 is None:
            notes.append("the artifact was exported from random weights; parity is checked against --weights")
    elif recorded.path is not None:
        path = Path(recorded.path)
        if not path.is_file():
            raise UsageError(f"{path}: the weights the artifact was exported from are gone; pass --weights PATH")
        digest = sha256_path(path)
        if digest != recorded.sha256:
            raise UsageError(
                f"{path}: changed since export (sha256 {digest[:12]}… vs {str(recorded.sha256)[:12]}…); "
                "pass the original file with --weights"
            )
    else:
        path, digest = None, None
    model = _create_model(manifest.model, path, recorded.seed)
    return model, {"weights": str(path) if path else None, "sha256": digest, "seed": recorded.seed}, notes


def _create_model(name: str, weights: Path | None, seed: int) -> Any:
    """A zoo model without the random-weights warning: here the seed is recorded, not forgotten."""
    from evit_deploy import zoo

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return zoo.create_model(name, weights, seed=seed)


def verify(
    artifact: str | Path,
    *,
    weights: str | Path | None = None,
    images: str | Path | None = None,
    samples: int | None = None,
    seed: int = 0,
    atol: float | None = None,
    rtol: float | None = None,
    tolerances: dict[str, float] | None = None,
    resolution: tuple[int, int] | None = None,
    device: str = "cpu",
    threads: int | None = None,
    record: bool = True,
    progress: Progress = _quiet,
    inventory: str | Path | None = None,
    weight_rounding: bool = True,
) -> ParityReport:
    """Run the artifact and its PyTorch reference on the same inputs and compare.

    ``device`` is ``cpu``/``cuda`` here, or an inventory device (``evit_deploy.devices``):
    then only the artifact runs there, inputs and the reference stay on this machine.
    ``weight_rounding``: for an fp16/int8 artifact, also run the reference with only its weights
    rounded to that precision, so a shortfall shows whether the precision or the export caused it
    (``evit_deploy.weight_rounding``; one more reference inference per sample).
    """
    from evit_deploy.targets.torch_ref import TorchRunner
    from evit_deploy.weight_rounding import rounded_copy

    handle = open_artifact(artifact)
    if samples is None:
        samples = 4 if images is None else count_inputs(Path(images))
    if samples < 1:
        raise UsageError(f"--samples must be at least 1, got {samples}")
    source = Path(images) if images is not None else None
    spec = _run_spec(handle, resolution, None)
    batches = input_batches(spec, samples=samples, seed=seed, source=source)
    recipe = Recipe.model_validate(handle.manifest.recipe)
    artifact_runner = _artifact_runner(handle, device, threads, inventory, progress)  # a device fails early
    tol_data = recipe.resolved_tolerances(getattr(artifact_runner, "tolerance_profile", None)).model_dump()
    tol_data.update({k: v for k, v in (tolerances or {}).items() if v is not None})
    if atol is not None:
        tol_data["atol"] = atol
    if rtol is not None:
        tol_data["rtol"] = rtol
    tol = Tolerances.model_validate(tol_data)
    progress("building the PyTorch reference")
    model, reference_info, notes = reference_model(handle.manifest, weights)
    num_classes = _num_classes(handle.manifest.model)
    comparator = Comparator(handle.manifest.task, num_classes, tol)
    out_names = [o["name"] for o in handle.manifest.outputs] or ["logits"]
    rounded = rounded_copy(model, handle.manifest.precision) if weight_rounding else None
    rounding = Comparator(handle.manifest.task, num_classes, tol) if rounded is not None else None
    with contextlib.ExitStack() as stack:
        reference = stack.enter_context(TorchRunner(model, spec, output_names=out_names))
        runner = stack.enter_context(artifact_runner)
        rounded_runner = stack.enter_context(TorchRunner(rounded, spec, output_names=out_names)) if rounded else None
        for index, batch in enumerate(batches):
            progress(f"sample {index + 1}/{samples}")
            feed = {spec.name: batch}
            expected = reference.run(feed)
            comparator.update(runner.run(feed), expected)
            if rounded_runner is not None and rounding is not None:
                rounding.update(rounded_runner.run(feed), expected)
        runner_info = runner.describe()
    report = comparator.report(
        weight_rounding=rounding,
        model=handle.manifest.model,
        artifact=str(handle.path),
        precision=handle.manifest.precision,
        input_source=str(source) if source else f"random (seed {seed}, {spec.height}x{spec.width})",
        reference=reference_info,
        runner=runner_info,
        notes=notes + handle.manifest.notes,
    )
    if record:
        _record_parity(handle, report)
    return report


def _artifact_runner(handle: ArtifactHandle, device: str, threads: int | None, inventory: str | Path | None,
                     progress: Progress) -> Runner:
    from evit_deploy.devices import is_local

    if is_local(device):
        return handle.runner(device=device, threads=threads)
    from evit_deploy.remote.flows import remote_runner

    return remote_runner(handle, device, threads=threads, inventory=inventory, progress=progress)


def _num_classes(model: str) -> int:
    from evit_deploy import zoo

    return int(zoo.get_card(model).num_classes)


def _record_parity(handle: ArtifactHandle, report: ParityReport) -> None:
    """Keep the latest verify result in the manifest (the manifest itself is not hashed)."""
    data = handle.manifest.model_dump(mode="json")
    data["parity"] = {
        "passed": report.passed,
        "verified": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": report.input_source,
        "samples": report.samples,
        "runner": report.runner,
        "task": report.task_metrics,
        "weight_rounding": report.weight_rounding,
        "outputs": {k: v.to_dict() for k, v in report.outputs.items()},
        "failed": [c.name for c in report.failures],
    }
    try:
        write_json_atomic(manifest_path_for(handle.path), data)
    except OSError:
        pass  # a read-only artifact folder still verifies; the result is in the report


# --------------------------------------------------------------------------- profile


def profile(
    artifact: str | Path,
    *,
    target: str | None = None,
    weights: str | Path | None = None,
    device: str = "cpu",
    threads: int | None = None,
    warmup: int = 10,
    iters: int = 50,
    batch: int | None = None,
    resolution: tuple[int, int] | None = None,
    per_layer: bool = False,
    seed: int = 0,
    on_iteration: Callable[[int, int], None] = lambda done, total: None,
    lock_clocks: bool = False,
    power: bool = False,
    inventory: str | Path | None = None,
    progress: Progress = _quiet,
) -> ProfileResult:
    """Time an artifact (or, with ``target='torch'``, a zoo model in eager PyTorch).

    ``device`` is ``cpu``/``cuda`` here, or an inventory device (``evit_deploy.devices``), where
    the artifact is uploaded and timed. ``lock_clocks`` and ``power`` are for Jetsons.
    """
    from evit_deploy.devices import is_local

    if warmup < 0 or iters < 1:
        raise UsageError(f"--iters must be at least 1 and --warmup at least 0 (got {iters}, {warmup})")
    if not is_local(device):
        if target is not None:
            raise UsageError(f"--target {target} profiles on this machine; export an artifact to profile it on {device}")
        from evit_deploy.remote.flows import profile_remote

        return profile_remote(artifact, device, inventory=inventory, threads=threads, warmup=warmup, iters=iters,
                              batch=batch, resolution=resolution, per_layer=per_layer, seed=seed,
                              lock_clocks=lock_clocks, power=power, on_iteration=on_iteration, progress=progress)
    if target == "torch":
        return _profile_torch(str(artifact), weights=weights, threads=threads, warmup=warmup, iters=iters,
                              batch=batch or 1, resolution=resolution, seed=seed, on_iteration=on_iteration)
    if target is not None:
        raise UsageError(f"--target is for profiling a model name in eager PyTorch (--target torch), not {target!r}")
    path = Path(artifact)
    if not path.exists():
        from evit_deploy import zoo

        if path.suffix == "" and str(artifact) in {c.name for c in zoo.list_cards()}:
            raise UsageError(f"{artifact} is a model name: profile it with --target torch, or export it first")
        raise UsageError(f"{artifact}: no such artifact")
    handle = open_artifact(path)
    reason = handle.target.timing_available(device)
    if reason is not None:
        raise RuntimeMissing(f"cannot profile {path.name} here: {reason}")
    spec = _run_spec(handle, resolution, batch)
    feed = {spec.name: next(iter(input_batches(spec, samples=1, seed=seed)))}

    def timed(tick: Callable[[int, int], None]) -> dict[str, Any]:
        return measure(lambda: handle.runner(device=device, threads=threads), feed, warmup=warmup, iters=iters,
                       per_layer=per_layer, on_iteration=tick)

    if lock_clocks or power:  # Jetson: jetson_clocks around the run, tegrastats during the timed part
        from evit_deploy.remote.state import ProfileConditions

        conditions = ProfileConditions(lock_clocks=lock_clocks, power=power, warmup=warmup, on_iteration=on_iteration)
        with conditions.applied():
            measured = timed(conditions.tick)
        conditions.annotate(measured["host"], measured["throughput_ips"])
    else:
        measured = timed(on_iteration)
    return ProfileResult(artifact=str(path), model=handle.manifest.model, target=handle.manifest.target,
                         precision=handle.manifest.precision, batch=spec.batch, input_shape=list(spec.shape),
                         threads=threads, warmup=warmup, iters=iters, device=device, **measured)


def _profile_torch(model: str, *, weights: str | Path | None, threads: int | None, warmup: int, iters: int,
                   batch: int, resolution: tuple[int, int] | None, seed: int,
                   on_iteration: Callable[[int, int], None]) -> ProfileResult:
    from evit_deploy import zoo
    from evit_deploy.targets.torch_ref import TorchRunner

    card = zoo.get_card(model)
    spec = spec_from_card(card, resolution, batch)
    module = _create_model(card.name, Path(weights) if weights else None, seed)
    feed = {spec.name: next(iter(input_batches(spec, samples=1, seed=seed)))}
    measured = measure(lambda: TorchRunner(module, spec, threads=threads), feed, warmup=warmup, iters=iters,
                       on_iteration=on_iteration)
    return ProfileResult(artifact=card.name, model=card.name, target="torch", precision="fp32", batch=batch,
                         input_shape=list(spec.shape), threads=threads, warmup=warmup, iters=iters, **measured)


__all__ = ["ArtifactHandle", "ExportResult", "export", "open_artifact", "profile", "verify"]
