"""The content-addressed artifact store on a device: ``<workdir>/artifacts/<sha256>/``.

The folder is named by the artifact's sha256 (a one-file artifact: that file's
sha256, so ``sha256sum`` on the device matches the folder name; several files: the
sha256 of their names and hashes). The files keep their names, so the manifest beside
them still describes them. An artifact already there (every file present with the
right hash) is not copied again; when only the manifest differs (re-exported with other
run-time options, say), only the manifest travels.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from evit_deploy.manifest import Manifest, confined, manifest_path_for


def artifact_key(manifest: Manifest) -> str:
    if len(manifest.files) == 1:
        return manifest.files[0].sha256
    listing = "".join(f"{f.path}\0{f.sha256}\n" for f in manifest.files)
    return hashlib.sha256(listing.encode()).hexdigest()


def manifest_digest(data: dict[str, Any]) -> str:
    """The manifest's identity without its last parity result (which verify rewrites)."""
    body = {k: v for k, v in data.items() if k != "parity"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def remote_dir(workdir: str, manifest: Manifest) -> str:
    return f"{workdir.rstrip('/')}/artifacts/{artifact_key(manifest)}"


def expectation(artifact: Path, manifest: Manifest) -> dict[str, Any]:
    """What the device must hold for this artifact (what ``hello --probe`` checks)."""
    manifest_file = manifest_path_for(artifact)
    return {
        "files": [[f.path, f.sha256, f.bytes] for f in manifest.files],
        "manifest": manifest_file.name,
        "manifest_digest": manifest_digest(json.loads(manifest_file.read_text())),
    }


def pack(artifact: Path, names: list[str]) -> Path:
    """A tar (in a temporary file) of the named artifact files and the manifest, manifest last.

    Every name is confined to the artifact's folder first (``manifest.confined``): the names come
    from a manifest, and nothing outside the artifact may travel to a device."""
    manifest_file = manifest_path_for(artifact)
    paths = [confined(artifact.parent, name, manifest_file) for name in names]
    with tempfile.NamedTemporaryFile(prefix="evit-upload-", suffix=".tar", delete=False) as handle, \
            tarfile.open(fileobj=handle, mode="w") as tar:
        for name, path in zip(names, paths):
            tar.add(str(path), arcname=name, filter=_plain)
        data = manifest_file.read_bytes()
        info = tarfile.TarInfo(manifest_file.name)
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
    return Path(handle.name)


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info
