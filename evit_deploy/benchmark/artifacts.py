"""A row's artifact: reused when one with a matching manifest is already there, else exported.

"Matching" means made from the same recipe (target, precision, resolution, options, calibration),
the same weights (sha256, or the same seed for random weights), the same model and the same evit
version, with every file still as exported (the manifest's hashes). Anything else is rebuilt, and the
row says why. ``--force`` rebuilds regardless.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from evit_deploy import api
from evit_deploy.benchmark.config import evit_version
from evit_deploy.errors import UsageError
from evit_deploy.manifest import MANIFEST_SUFFIX, Manifest, load_manifest
from evit_deploy.pipeline.export import PreparedExport, prepare
from evit_deploy.requests import ExportRequest

Progress = Callable[[str], None]


@dataclass
class Built:
    artifact: Path
    manifest: Manifest
    export_s: float  # the export's own duration (for a reused artifact: when it was made)
    reused: bool
    note: str | None = None  # why an artifact found there was not reused


def build(request: ExportRequest, *, weights_sha256: str | None, force: bool, progress: Progress) -> Built:
    """The artifact ``request`` describes, from ``request.out`` when it is already there and matches."""
    plan = prepare(request)  # the recipe as export would resolve it; refuses a bad one before anything is written
    note = None
    if not force:
        found, note = _matching(plan, weights_sha256)
        if found is not None:
            return Built(found[0], found[1], found[1].export_seconds, reused=True)
    result = api.export(request, progress=progress)
    return Built(result.artifact, result.manifest, result.seconds, reused=False, note=note)


def _matching(plan: PreparedExport, weights_sha256: str | None) -> tuple[tuple[Path, Manifest] | None, str | None]:
    """The artifact already in place for ``plan`` (or None), and why one found there does not do."""
    request = plan.request
    manifest_file = request.out / f"{request.name or plan.card.name}{MANIFEST_SUFFIX}"
    if not manifest_file.is_file():
        return None, None
    try:
        manifest = Manifest.model_validate_json(manifest_file.read_text())
        artifact = manifest_file.parent / manifest.primary
        load_manifest(artifact)  # every file present and unchanged
    except (OSError, ValueError, ValidationError, UsageError) as err:
        return None, f"rebuilt: the artifact there is incomplete or changed ({str(err).splitlines()[0]})"
    differs = [what for what, same in (
        ("model", manifest.model == plan.card.name),
        ("recipe", manifest.recipe.model_dump(mode="json") == plan.recipe.model_dump(mode="json")),
        ("weights", manifest.weights.sha256 == weights_sha256
         and (weights_sha256 is not None or manifest.weights.seed == request.seed)),
        ("evit version", manifest.versions.get("evit-deploy") == evit_version()),
    ) if not same]
    if differs:
        return None, f"rebuilt: the artifact there was made with another {', '.join(differs)}"
    return (artifact, manifest), None
