"""Issue 14 item 2: a manifest's file entries stay inside the artifact's folder.

A manifest decides which files ``verify`` hashes and ``--device`` uploads (``remote.store.pack``
tars ``artifact.parent / entry``): an entry that reaches outside, by ``..``, an absolute path or a
symlink, is refused with one line naming it, before anything is read or sent.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from evit_deploy.errors import UsageError
from evit_deploy.manifest import confined, load_manifest, manifest_path_for, sha256_path, size_of
from evit_deploy.remote.store import pack


@pytest.fixture
def artifact(small_onnx, copy_artifact, tmp_path) -> Path:
    return copy_artifact(small_onnx, tmp_path / "art")


@pytest.fixture
def secret(tmp_path) -> Path:
    """A file of this machine outside the artifact folder (a stand-in for ~/.ssh/id_ed25519)."""
    path = tmp_path / "secret.key"
    path.write_text("PRIVATE KEY\n")
    return path


def add_entry(artifact: Path, entry: str, content: Path) -> None:
    """List ``entry`` in the manifest with ``content``'s true hash, as an attacker would."""
    manifest = manifest_path_for(artifact)
    data = json.loads(manifest.read_text())
    data["files"].append({"path": entry, "sha256": sha256_path(content), "bytes": size_of(content)})
    manifest.write_text(json.dumps(data))


def hostile_entries(artifact: Path, secret: Path) -> dict[str, str]:
    """id -> entry, each pointing at ``secret`` in another way (symlinks made here)."""
    depth = len(artifact.parent.relative_to(secret.parent).parts)
    (artifact.parent / "weights.bin").symlink_to(secret)
    bundle = artifact.parent / "extra.mlpackage"
    bundle.mkdir()
    (bundle / "Data").symlink_to(secret)
    return {"dotdot": "/".join([".."] * depth + [secret.name]), "absolute": str(secret),
            "symlink": "weights.bin", "bundle-link": "extra.mlpackage"}


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "bundle-link"])
def test_verify_and_profile_refuse_an_entry_outside_the_folder(artifact, secret, cli, kind):
    entry = hostile_entries(artifact, secret)[kind]
    add_entry(artifact, entry, secret)
    for command in (("verify", artifact, "--samples", "1"), ("profile", artifact, "--iters", "1", "--warmup", "0")):
        result = cli(*command)
        assert result.code == 2, result
        (line,) = result.error_lines
        assert f"file entry {entry!r}" in line and "beside it" in line, line
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "bundle-link"])
def test_pack_never_tars_a_file_outside_the_folder(artifact, secret, kind):
    entry = hostile_entries(artifact, secret)[kind]
    with pytest.raises(UsageError, match="outside the artifact folder|absolute"):
        pack(artifact, [artifact.name, entry])


def test_links_inside_the_folder_are_fine(artifact):
    (artifact.parent / "alias.onnx").symlink_to(artifact.name)
    assert confined(artifact.parent, "alias.onnx", "m") == artifact.parent / "alias.onnx"
    add_entry(artifact, "alias.onnx", artifact)
    assert load_manifest(artifact).files[-1].path == "alias.onnx"


@pytest.mark.parametrize("entry", ["", ".", "a/../../x", "C:\\x", "x\n", "sub\\..\\..\\x"])
def test_malformed_entries_are_named(tmp_path, entry):
    with pytest.raises(UsageError, match="file entry") as err:
        confined(tmp_path, entry, "m.evit.json")
    assert "\n" not in str(err.value).replace(repr(entry), "")
