"""Property: a manifest edited at random is either a valid manifest of the files beside it, or
refused in one line; ``evit verify`` on it exits 0, 1 or 2 (one line), prints no traceback,
writes nothing outside the artifact folder, and a refusal leaves the manifest as it was.

Edits: any field set to a value of any shape, fields deleted, file entries pointing elsewhere
(``..``, absolute paths, symlinks out of and inside the folder, entries added with a file's
true hash), the primary entry renamed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evit_deploy.errors import UsageError
from evit_deploy.manifest import load_manifest, manifest_path_for, sha256_path

from .strategies import DEEP_CLI, FAST_CLI, deep, fast, nested, scratch

pytestmark = pytest.mark.filterwarnings("ignore")

HOSTILE_PATHS = ["../outside/secret.key", "/etc/hostname", "art/../../outside/secret.key", "link-out", "link-in",
                 "", ".", "sub/../../x", "C:\\x", "nested/deeper.bin", "x\n"]


def paths_in(data: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a JSON document (dict keys and list indices)."""
    found = [prefix] if prefix else []
    if isinstance(data, dict):
        for key, value in data.items():
            found += paths_in(value, (*prefix, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += paths_in(value, (*prefix, index))
    return found


edits = st.lists(st.one_of(
    st.tuples(st.just("set"), st.integers(0, 10**6), nested()),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.none()),
    st.tuples(st.just("file-path"), st.integers(0, 3), st.sampled_from(HOSTILE_PATHS)),
    st.tuples(st.just("add-entry"), st.just(0), st.sampled_from(HOSTILE_PATHS)),
), min_size=1, max_size=3)


def apply(edit: tuple, data: Any, folder: Path) -> Any:
    kind, pick, value = edit
    if kind in ("set", "delete"):
        paths = paths_in(data)
        if not paths:
            return value if kind == "set" else data
        *parent_path, last = paths[pick % len(paths)]
        parent = data
        for key in parent_path:
            parent = parent[key]
        if kind == "set":
            parent[last] = value
        else:
            del parent[last]
        return data
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list):
        return data
    target = folder / "outside" / "secret.key" if "out" in value else next(iter(folder.glob("art/*.onnx")), None)
    entry = {"path": value, "sha256": sha256_path(target) if target and target.exists() else "0" * 64,
             "bytes": target.stat().st_size if target and target.exists() else 0}
    if kind == "add-entry":
        files.append(entry)
    elif files:
        index = pick % len(files)
        if isinstance(files[index], dict):
            files[index]["path"] = value
    return data


def prepare(root: Path, small_onnx: Path) -> Path:
    import shutil

    art = root / "art"
    shutil.copytree(small_onnx.parent, art)
    (root / "outside").mkdir()
    (root / "outside" / "secret.key").write_text("PRIVATE\n")
    (art / "link-out").symlink_to(root / "outside" / "secret.key")
    (art / "link-in").symlink_to(small_onnx.name)
    return art / small_onnx.name


def snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    found = {}
    for base, _dirs, files in os.walk(root):
        for name in files:
            path = Path(base) / name
            if skip not in path.parents:
                stat = path.lstat()
                found[str(path)] = (stat.st_size, stat.st_mtime_ns)
    return found


def edited(root: Path, small_onnx: Path, changes: list[tuple]) -> tuple[Path, bytes]:
    artifact = prepare(root, small_onnx)
    manifest = manifest_path_for(artifact)
    data = json.loads(manifest.read_text())
    for change in changes:
        data = apply(change, data, root)
    text = json.dumps(data, allow_nan=True).encode()
    manifest.write_bytes(text)
    return artifact, text


def check_load(root: Path, small_onnx: Path, changes: list[tuple]) -> None:
    artifact, _ = edited(root, small_onnx, changes)
    try:
        manifest = load_manifest(artifact)
    except UsageError as err:
        assert "\n" not in str(err)
        return
    folder = artifact.parent.resolve()
    for entry in manifest.files:  # accepted: every entry is a file of the folder with its recorded hash
        path = (artifact.parent / entry.path).resolve()
        assert path.is_relative_to(folder), entry.path
        assert sha256_path(artifact.parent / entry.path) == entry.sha256


def check_verify(cli, root: Path, small_onnx: Path, changes: list[tuple]) -> None:
    artifact, text = edited(root, small_onnx, changes)
    before = snapshot(root, artifact.parent)
    result = cli("verify", artifact, "--samples", 1, "--no-weight-rounding")
    assert result.code in (0, 1, 2), result
    if result.code == 2:
        assert len(result.error_lines) == 1, result
        assert manifest_path_for(artifact).read_bytes() == text, "a refused verify rewrote the manifest"
    assert snapshot(root, artifact.parent) == before, "verify wrote outside the artifact folder"


@fast(200)
@given(edits)
def test_edited_manifests_load_or_are_refused(tmp_path_factory, small_onnx, changes):
    with scratch(tmp_path_factory, "m") as folder:
        check_load(folder, small_onnx, changes)


@pytest.mark.slow
@deep()
@given(edits)
def test_edited_manifests_load_or_are_refused_deep(tmp_path_factory, small_onnx, changes):
    with scratch(tmp_path_factory, "m") as folder:
        check_load(folder, small_onnx, changes)


@fast(FAST_CLI)
@given(edits)
def test_verify_on_edited_manifests(cli, tmp_path_factory, small_onnx, changes):
    with scratch(tmp_path_factory, "v") as folder:
        check_verify(cli, folder, small_onnx, changes)


@pytest.mark.slow
@deep(DEEP_CLI)
@given(edits)
def test_verify_on_edited_manifests_deep(cli, tmp_path_factory, small_onnx, changes):
    with scratch(tmp_path_factory, "v") as folder:
        check_verify(cli, folder, small_onnx, changes)
