"""Artifact surgery for the remote tests: copies under other names, perturbed weights, broken bytes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from evit_deploy.manifest import manifest_path_for, sha256_path


def copy_as(artifact: Path, folder: Path, stem: str) -> Path:
    """The artifact and its manifest under a new stem (any characters a file name can hold)."""
    folder.mkdir(parents=True, exist_ok=True)
    new = folder / f"{stem}{artifact.suffix}"
    shutil.copy(artifact, new)
    manifest = json.loads(manifest_path_for(artifact).read_text())
    manifest["files"][0]["path"] = new.name
    manifest_path_for(new).write_text(json.dumps(manifest, indent=2))
    return new


def rehash(artifact: Path) -> None:
    """Make the manifest agree with the artifact's current bytes (a re-export of different weights)."""
    path = manifest_path_for(artifact)
    manifest = json.loads(path.read_text())
    manifest["files"][0]["sha256"] = sha256_path(artifact)
    manifest["files"][0]["bytes"] = artifact.stat().st_size
    manifest["parity"] = None
    path.write_text(json.dumps(manifest, indent=2))


def perturb_onnx(artifact: Path, scale: float = 1.5) -> None:
    """Scale the largest float initializer: a valid model that no longer computes the reference."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(artifact))
    biggest = max((t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT),
                  key=lambda t: int(np.prod(t.dims)))
    values = numpy_helper.to_array(biggest) * np.float32(scale)
    biggest.CopyFrom(numpy_helper.from_array(values.astype(np.float32), biggest.name))
    onnx.save(model, str(artifact))


def keys(data: dict) -> set[str]:
    return set(data)
