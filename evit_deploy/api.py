"""``export``, ``verify`` and ``profile``: the Python API the CLI is a thin shell over.

Each function validates its arguments into a request (``evit_deploy.requests``: the same
object, checks and messages as the CLI's flags), routes it to this machine
(``evit_deploy.pipeline``) or to a device of the inventory (``evit_deploy.remote``), and
returns a result object; nothing here prints. Long steps report through ``progress``
callbacks so the CLI can draw bars and notebooks can stay quiet.

Keyword arguments are the request's fields, e.g.
``export("efficientvit-b1-r224", target="onnx", weights="b1.pt", resolution="224x224")``,
``verify(path, samples=8, tolerances={"max_rel": 1e-4})``, ``profile(path, threads=2)``.
A wrong type or value raises ``UsageError`` naming the flag, exactly as the CLI reports it.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from evit_deploy.artifact import ArtifactHandle, open_artifact
from evit_deploy.bundle import is_bundle, load_bundle
from evit_deploy.contracts import Runner
from evit_deploy.devices import is_local, load_inventory
from evit_deploy.errors import UsageError
from evit_deploy.parity import BundleReport, ParityReport
from evit_deploy.pipeline.export import ExportResult, export_here
from evit_deploy.pipeline.profile import profile_here
from evit_deploy.pipeline.verify import verify_runner
from evit_deploy.profiling import ProfileResult, warn_oversubscribed
from evit_deploy.requests import ExportRequest, ProfileRequest, VerifyRequest
from evit_deploy.targets.base import get_target

Progress = Callable[[str], None]
Tick = Callable[[int, int], None]


def _quiet(message: str) -> None:
    return None


def _no_tick(done: int, total: int) -> None:
    return None


def export(model: str | ExportRequest, *, progress: Progress = _quiet, **options: Any) -> ExportResult:
    """Checkpoint -> artifact + manifest in ``out``; options are ``ExportRequest``'s fields.

    With ``device=NAME`` (an inventory device) the device preset's target and precision apply
    unless given, and a TensorRT engine is built on the device itself.
    """
    request = model if isinstance(model, ExportRequest) else ExportRequest.parse(model=model, **options)
    if request.device is None:
        return export_here(request, progress=progress)
    return _export_for_device(request, progress)


def _export_for_device(request: ExportRequest, progress: Progress) -> ExportResult:
    device = str(request.device)
    if is_local(device) or "," in device:
        raise UsageError(f"export --device takes one inventory device (see `evit devices`), not {device!r}")
    inventory = load_inventory(request.inventory)
    entry = inventory.get(device.partition(":")[0])
    if request.config is None:
        request = request.replace(target=request.target or entry.default_target,
                                  precision=request.precision or entry.default_precision)
    if request.target is not None and get_target(request.target).builds_on_device:
        from evit_deploy.remote.export import export_on_device

        return export_on_device(request, inventory=inventory, progress=progress)
    return export_here(request.replace(device=None, inventory=None), progress=progress)


def verify(artifact: str | Path | VerifyRequest, *, progress: Progress = _quiet,
           **options: Any) -> ParityReport | BundleReport:
    """Run the artifact and its PyTorch reference on the same inputs and compare.

    ``device`` is ``cpu``/``cuda`` here, or an inventory device (``evit_deploy.devices``):
    then only the artifact runs there, inputs and the reference stay on this machine. A bundle
    (``MODEL.evit.json`` of a several-graph export) is verified graph by graph.
    """
    request = artifact if isinstance(artifact, VerifyRequest) else VerifyRequest.parse(artifact=artifact, **options)
    if is_bundle(request.artifact):
        _, graphs = load_bundle(request.artifact)
        return BundleReport(str(request.artifact), {
            name: verify(request.replace(artifact=path), progress=lambda m, n=name: progress(f"{n}: {m}"))
            for name, path in graphs.items()})
    handle = open_artifact(request.artifact)
    handle.run_spec(request.resolution)  # a shape the artifact cannot take is refused before a device is reached
    runner = artifact_runner(handle, request.device, threads=request.threads, inventory=request.inventory,
                             progress=progress)
    return verify_runner(handle, runner, request, progress=progress)


def artifact_runner(handle: ArtifactHandle, device: str, *, threads: int | None = None,
                    inventory: str | Path | None = None, progress: Progress = _quiet) -> Runner:
    """A runner for the artifact here (``cpu``/``cuda``) or on an inventory device (connected, not loaded)."""
    if is_local(device):
        warn_oversubscribed(threads)
        return handle.runner(device=device, threads=threads)
    from evit_deploy.remote.flows import remote_runner

    return remote_runner(handle, device, threads=threads, inventory=inventory, progress=progress)


def profile(artifact: str | Path | ProfileRequest, *, on_iteration: Tick = _no_tick, progress: Progress = _quiet,
            **options: Any) -> ProfileResult | dict[str, ProfileResult]:
    """Time an artifact (or, with ``target='torch'``, a zoo model in eager PyTorch).

    ``device`` is ``cpu``/``cuda`` here, or an inventory device (``evit_deploy.devices``), where
    the artifact is uploaded and timed. ``lock_clocks`` and ``power`` are for Jetsons. A bundle
    gives one result per graph.
    """
    request = artifact if isinstance(artifact, ProfileRequest) else ProfileRequest.parse(artifact=artifact,
                                                                                         **options)
    if is_bundle(Path(request.artifact)):
        return _profile_bundle(request, on_iteration, progress)
    if is_local(request.device):
        return profile_here(request, on_iteration=on_iteration)
    if request.target is not None:
        raise UsageError(f"--target {request.target} profiles on this machine; export an artifact to profile it on "
                         f"{request.device}")
    from evit_deploy.remote.flows import profile_remote

    return profile_remote(request, on_iteration=on_iteration, progress=progress)


def _profile_bundle(request: ProfileRequest, on_iteration: Tick, progress: Progress) -> dict[str, ProfileResult]:
    """Each graph at its card's profile sizes (a dynamic export) or its own; here, also the per-photo path
    through all graphs (SAM: one image, 16 prompts). On a device each graph is timed there alone."""
    from evit_deploy.pipeline.bundle_profile import END_TO_END, end_to_end_here, profile_points

    _, graphs = load_bundle(Path(request.artifact))
    results: dict[str, ProfileResult] = {}
    for path in graphs.values():
        for key, dims in profile_points(path):
            progress(f"timing {key}")
            results[key] = profile(request.replace(artifact=str(path), dims=dims), on_iteration=on_iteration,
                                   progress=progress)
    if is_local(request.device):
        progress("timing one image end to end")
        whole = end_to_end_here(request, graphs, on_iteration=on_iteration)
        if whole is not None:
            results[END_TO_END] = whole
    return results


__all__ = ["ArtifactHandle", "ExportResult", "artifact_runner", "export", "open_artifact", "profile", "verify"]
