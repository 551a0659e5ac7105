"""Manifests and artifact files, written so that an interrupted export never looks complete.

An artifact is its file(s) plus ``NAME.evit.json``. The manifest is written last: a file
without one is refused by ``verify`` and ``profile``, and every file's sha256 is in it so
an artifact edited after export is refused too.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evit_deploy.configs import Recipe
from evit_deploy.errors import UsageError
from evit_deploy.spec import InputSpec, Precision, TensorInfo

MANIFEST_SUFFIX = ".evit.json"
SCHEMA_VERSION = 1


class FileEntry(BaseModel):
    path: str  # relative to the manifest's folder
    sha256: str
    bytes: int


class SourceWeights(BaseModel):
    path: str | None = None  # as given at export; None for seeded random init
    sha256: str | None = None
    seed: int = 0


class ParityRecord(BaseModel):
    """The latest ``verify`` of the artifact, kept in its manifest (the manifest itself is not hashed)."""

    model_config = ConfigDict(extra="allow")

    passed: bool
    verified: str
    inputs: str
    samples: int
    runner: dict[str, Any] = Field(default_factory=dict)
    task: dict[str, float] = Field(default_factory=dict)
    weight_rounding: dict[str, float] | None = None
    outputs: dict[str, dict[str, Any]] = Field(default_factory=dict)
    failed: list[str] = Field(default_factory=list)


class Manifest(BaseModel):
    """How an artifact was made, enough to rebuild its PyTorch reference anywhere.

    Every section is typed and parsed once, here: readers get an ``InputSpec``, ``TensorInfo``s
    and a ``Recipe``, never dicts to re-parse. ``details`` is the target's own section.
    """

    model_config = ConfigDict(extra="allow")

    schema_version: int = SCHEMA_VERSION
    model: str
    task: str
    target: str
    precision: Precision
    files: list[FileEntry]
    input: InputSpec
    inputs: list[TensorInfo] = Field(default_factory=list)  # the runner's view of the artifact
    outputs: list[TensorInfo] = Field(default_factory=list)
    recipe: Recipe
    weights: SourceWeights
    versions: dict[str, str]
    created: str
    export_seconds: float
    notes: list[str] = Field(default_factory=list)
    details: dict[str, Any] = Field(default_factory=dict)
    parity: ParityRecord | None = None
    graph: str | None = None  # which graph of a several-graph model (SAM: encoder, decoder); None: the model
    bundle: str | None = None  # the bundle manifest naming every graph of the export (``evit_deploy.bundle``)

    @property
    def primary(self) -> str:
        return self.files[0].path


def manifest_path_for(artifact: Path) -> Path:
    """``out/model.onnx`` -> ``out/model.evit.json`` (one manifest per artifact stem)."""
    name = artifact.name
    for suffix in (".mlpackage", ".onnx", ".tflite", ".engine", ".plan"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    else:
        name = artifact.stem
    return artifact.with_name(name + MANIFEST_SUFFIX)


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a directory bundle (``.mlpackage``) by relative path and content."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON next to its destination and rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def staging_dir(out: Path) -> Iterator[Path]:
    """A private folder inside ``out`` for work in progress, removed whatever happens; folders this
    run created for ``out`` are removed too when it fails and leaves them empty."""
    created = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=".evit-staging-", dir=out)
    except OSError as err:
        raise UsageError(f"cannot write to --out {out}: {err.strerror or err}; choose a writable folder") from None
    path = Path(probe)
    try:
        yield path
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        for folder in created:  # innermost first
            try:
                folder.rmdir()
            except OSError:
                break  # not empty (or not ours to remove): stop there
        raise
    finally:
        shutil.rmtree(path, ignore_errors=True)


def publish(staged: list[Path], out: Path, manifest: Manifest) -> Path:
    """Move staged files into ``out`` and write the manifest last.

    Any old manifest goes first, so a crash between the moves leaves files without a
    manifest (incomplete, refused) rather than new files beside an old manifest.
    """
    manifest_file = manifest_path_for(out / staged[0].name)
    manifest_file.unlink(missing_ok=True)
    for file in staged:
        target = out / file.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(file, target)
    write_json_atomic(manifest_file, manifest.model_dump(mode="json"))
    return out / staged[0].name


def load_manifest(artifact: Path, *, check_hashes: bool = True) -> Manifest:
    """The manifest of an artifact, refusing incomplete or altered artifacts with one clear line."""
    if not artifact.exists():
        raise UsageError(f"{artifact}: no such artifact")
    manifest_file = manifest_path_for(artifact)
    if not manifest_file.is_file():
        raise UsageError(
            f"{artifact}: no manifest ({manifest_file.name}) beside it, so evit cannot tell how it was made "
            "or whether its export finished; re-export it with `evit export`"
        )
    try:
        manifest = Manifest.model_validate_json(manifest_file.read_text())
    except (ValidationError, ValueError) as err:
        raise UsageError(f"{manifest_file}: not a valid evit manifest ({str(err).splitlines()[0]}); re-export") from None
    if manifest.primary != artifact.name:
        raise UsageError(f"{manifest_file} describes {manifest.primary}, not {artifact.name}; re-export the artifact")
    if check_hashes:
        for entry in manifest.files:
            path = artifact.parent / entry.path
            if not path.exists():
                raise UsageError(f"{path}: listed in the manifest but missing; re-export the artifact")
            actual = sha256_path(path)
            if actual != entry.sha256:
                raise UsageError(
                    f"{path}: changed after export (sha256 {actual[:12]}… but the manifest says "
                    f"{entry.sha256[:12]}…); re-export it rather than trusting a modified artifact"
                )
    return manifest
