"""A model exported as several graphs: one artifact and manifest per graph, one bundle naming them all.

Each graph (SAM's ``encoder`` and ``decoder``) is a complete artifact of its own, with its own
manifest, hashes and runner, so it uploads, verifies and profiles alone. The bundle
``MODEL.evit.json`` is written last, after every graph is in place; it names each graph's
artifact and the sha256 of each graph's files as exported, so a bundle whose graphs were
swapped or re-exported one by one is refused.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from evit_deploy.configs import Recipe
from evit_deploy.errors import UsageError
from evit_deploy.manifest import MANIFEST_SUFFIX, Manifest, load_manifest, write_json_atomic
from evit_deploy.spec import Precision


class BundleGraph(BaseModel):
    model_config = ConfigDict(extra="forbid")

    artifact: str  # the graph's primary file, beside the bundle
    sha256: str  # of that primary file, as exported


class Bundle(BaseModel):
    """``MODEL.evit.json`` of a several-graph export."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = 1
    kind: Literal["bundle"] = "bundle"
    model: str
    task: str
    target: str
    precision: Precision
    recipe: Recipe
    created: str
    graphs: dict[str, BundleGraph]


def bundle_path(out: Path, stem: str) -> Path:
    return out / f"{stem}{MANIFEST_SUFFIX}"


def write_bundle(path: Path, manifests: dict[str, tuple[Path, Manifest]], recipe: Recipe) -> Bundle:
    """Write the bundle (atomically, last) for graph -> (artifact, its manifest)."""
    first = next(iter(manifests.values()))[1]
    bundle = Bundle(model=first.model, task=first.task, target=first.target, precision=first.precision,
                    recipe=recipe, created=first.created,
                    graphs={name: BundleGraph(artifact=artifact.name, sha256=manifest.files[0].sha256)
                            for name, (artifact, manifest) in manifests.items()})
    write_json_atomic(path, bundle.model_dump(mode="json"))
    return bundle


def is_bundle(path: Path) -> bool:
    """A ``.evit.json`` whose ``kind`` is ``bundle`` (read cheaply: the first bytes say it)."""
    if not path.name.endswith(MANIFEST_SUFFIX) or not path.is_file():
        return False
    try:
        return Bundle.model_validate_json(path.read_text()).kind == "bundle"
    except (ValidationError, ValueError, OSError):
        return False


def load_bundle(path: Path) -> tuple[Bundle, dict[str, Path]]:
    """The bundle and each graph's artifact path, every graph checked as ``load_manifest`` checks one."""
    try:
        bundle = Bundle.model_validate_json(path.read_text())
    except (ValidationError, ValueError) as err:
        raise UsageError(f"{path}: not a valid evit bundle ({str(err).splitlines()[0]}); re-export") from None
    except OSError as err:
        raise UsageError(f"{path}: cannot read it ({err.strerror or err})") from None
    artifacts: dict[str, Path] = {}
    for name, entry in bundle.graphs.items():
        if Path(entry.artifact).name != entry.artifact:
            raise UsageError(f"{path}: graph {name!r} points outside the bundle's folder ({entry.artifact!r}); "
                             "re-export rather than trusting it")
        artifact = path.parent / entry.artifact
        manifest = load_manifest(artifact)
        if manifest.files[0].sha256 != entry.sha256 or manifest.graph != name:
            raise UsageError(f"{path}: graph {name!r} ({entry.artifact}) is not the one exported with this bundle; "
                             "re-export the model")
        artifacts[name] = artifact
    return bundle, artifacts
