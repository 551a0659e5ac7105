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
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evit_deploy.configs import Recipe
from evit_deploy.errors import DiskFull, EvitError, UsageError, disk_full_cause
from evit_deploy.spec import InputSpec, Precision, TensorInfo

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

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
    excused: list[dict[str, Any]] = Field(default_factory=list)  # ParityReport.excused


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


def save_figure_atomic(figure: Any, path: Path, dpi: int = 110) -> None:
    """A matplotlib figure written beside ``path`` and renamed into place: a plot is whole or absent."""
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
        os.close(fd)
        figure.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    except OSError as err:
        raise UsageError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


STAGING_PREFIX = ".evit-staging-"
_IMPORTED = time.time()


@contextmanager
def staging_dir(out: Path) -> Iterator[Path]:
    """A private folder inside ``out`` for work in progress, removed whatever happens; folders this
    run created for ``out`` are removed too when it fails and leaves them empty.

    The folder is ``flock``-ed while the export runs. SIGTERM and SIGHUP unwind like Ctrl-C, so
    it goes at once; SIGKILL leaves it behind (nothing runs then), and the next export into
    ``out`` removes every staging folder that no running export holds and that is older than
    itself (``remove_stale_staging``)."""
    created = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(out)
        path = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    except OSError as err:
        raise UsageError(f"cannot write to --out {out}: {err.strerror or err}; choose a writable folder") from None
    lock = _try_lock(path)
    try:
        with _signals_unwind():
            yield path
    except BaseException as err:
        shutil.rmtree(path, ignore_errors=True)
        for folder in created:  # innermost first
            try:
                folder.rmdir()
            except OSError:
                break  # not empty (or not ours to remove): stop there
        full = disk_full_cause(err)
        if full is not None and not isinstance(err, EvitError):
            raise DiskFull.from_os_error(full, out) from None
        raise
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if lock is not None:
            os.close(lock)


def remove_stale_staging(out: Path) -> list[Path]:
    """Remove the staging folders in ``out`` left by killed exports; returns what was removed.

    Stale means: no process holds its lock, and it is older than this process (a folder made after
    we started may belong to an export still between creating and locking it)."""
    if fcntl is None:  # no flock (Windows): a live export's folder cannot be told from a dead one's
        return []
    started = process_started()
    removed = []
    for folder in sorted(out.glob(STAGING_PREFIX + "*")):
        try:
            if folder.is_symlink() or not folder.is_dir() or folder.stat().st_mtime >= started:
                continue
            lock = _try_lock(folder)
        except OSError:
            continue
        if lock is None:
            continue  # a running export holds it
        try:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        finally:
            os.close(lock)
    return removed


def process_started() -> float:
    """When this process started (Linux: from /proc), else when evit was imported."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED


def _try_lock(folder: Path) -> int | None:
    """An exclusive ``flock`` on the folder itself (the fd holds it; the kernel drops it when the
    process dies, however it dies); None when another process holds it or locks do not exist here."""
    if fcntl is None:
        return None
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


@contextmanager
def _signals_unwind() -> Iterator[None]:
    """SIGTERM/SIGHUP raise ``SystemExit(128 + signal)`` while staging, so ``finally`` blocks remove
    the staging folder (their default action ends the process where it stands). Only on the main
    thread and where no one else installed a handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for name in ("SIGTERM", "SIGHUP"):
        number = getattr(signal, name, None)
        if number is not None and signal.getsignal(number) == signal.SIG_DFL:
            previous[number] = signal.signal(number, _unwind)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _unwind(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


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


def confined(folder: Path, entry: str, origin: Path | str) -> Path:
    """``folder / entry``, refused unless it stays inside ``folder``.

    A manifest received from someone else decides which files ``verify`` hashes and which
    files ``--device`` uploads: an entry such as ``../../.ssh/id_ed25519`` (or a symlink to it)
    would otherwise carry a file of this machine to a device. Entries are relative POSIX paths
    without ``..``; they, and any link inside a bundle folder, must resolve inside ``folder``."""
    def refuse(why: str) -> UsageError:
        return UsageError(f"{origin}: file entry {entry!r} {why}; a manifest lists only files beside it "
                          "(re-export the artifact, or remove that entry)")

    if not entry or any(not c.isprintable() for c in entry):
        raise refuse("is empty or holds control characters")
    pure = PurePosixPath(entry)
    if pure.is_absolute() or "\\" in entry or (len(entry) > 1 and entry[1] == ":"):
        raise refuse("is an absolute or Windows path")
    if ".." in pure.parts or pure.parts in ((), (".",)):
        raise refuse("points outside the artifact folder ('..')")
    root = folder.resolve()
    path = folder.joinpath(*pure.parts)
    for candidate in [path, *(_links_under(path) if path.is_dir() and not path.is_symlink() else [])]:
        if not candidate.resolve().is_relative_to(root):
            link = "" if candidate == path else f" (its {candidate.relative_to(path)})"
            raise refuse(f"resolves through a symlink{link} outside the artifact folder, to {candidate.resolve()}")
    return path


def _links_under(folder: Path) -> list[Path]:
    """Every symlink inside a bundle folder (``.mlpackage``), without following any."""
    found = []
    for base, dirs, files in os.walk(folder, followlinks=False):
        found += [Path(base) / n for n in dirs + files if (Path(base) / n).is_symlink()]
    return found


def _check_sections(manifest: Manifest, origin: Path) -> None:
    """The sections ``verify``/``profile`` rebuild objects from must parse as those objects: a
    hand-edited recipe or input spec is refused here, by section, not by a traceback later."""
    from pydantic import TypeAdapter

    from evit_deploy.configs import Recipe
    from evit_deploy.spec import InputSpec, TensorInfo

    if not manifest.files:
        raise UsageError(f"{origin}: not a valid evit manifest (it lists no files); re-export the artifact")
    sections: list[tuple[str, Any]] = [("recipe", lambda: Recipe.model_validate(manifest.recipe)),
                                       ("input", lambda: _positive(TypeAdapter(InputSpec).validate_python(manifest.input)))]
    sections += [(f"{kind}[{i}]", lambda d=d: TypeAdapter(TensorInfo).validate_python(d))
                 for kind in ("inputs", "outputs") for i, d in enumerate(getattr(manifest, kind))]
    for name, parse in sections:
        try:
            parse()
        except (ValidationError, ValueError, TypeError) as err:
            first = str(err).splitlines()
            detail = " ".join(first[1:3]).strip() if isinstance(err, ValidationError) else (first or [""])[0]
            raise UsageError(f"{origin}: not a valid evit manifest ({name}: {detail}); re-export the artifact") from None


def _positive(spec: Any) -> Any:
    if min(spec.batch, spec.height, spec.width) < 1 or len(spec.mean) != 3 or len(spec.std) != 3 or 0 in spec.std:
        raise ValueError("batch, height and width must be positive, mean and std three numbers, std non-zero")
    return spec


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
    _check_sections(manifest, manifest_file)
    if manifest.primary != artifact.name:
        primary = manifest.primary if manifest.primary.isprintable() else repr(manifest.primary)
        raise UsageError(f"{manifest_file} describes {primary}, not {artifact.name}; re-export the artifact")
    paths = [confined(artifact.parent, entry.path, manifest_file) for entry in manifest.files]
    if check_hashes:
        for entry, path in zip(manifest.files, paths):
            if not path.exists():
                raise UsageError(f"{path}: listed in the manifest but missing; re-export the artifact")
            actual = sha256_path(path)
            if actual != entry.sha256:
                raise UsageError(
                    f"{path}: changed after export (sha256 {actual[:12]}… but the manifest says "
                    f"{entry.sha256[:12]}…); re-export it rather than trusting a modified artifact"
                )
    return manifest
