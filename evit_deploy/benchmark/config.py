"""What makes two benchmark runs comparable: the model, its weights, the data and the settings.

Shards run on different machines, where the same dataset sits under different paths, so folders are
identified by their content's outline (relative names and sizes), weights by their sha256. The
matrix itself (targets, precisions, resolutions, devices) is not part of it: shards may split it
any way, e.g. one CI job per platform.
"""
from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path
from typing import Any

from evit_deploy.requests import BenchmarkRequest

PATHS = "paths"  # where the inputs were on the machine that ran: shown, never compared


def folder_fingerprint(folder: Path) -> dict[str, Any]:
    """Files below ``folder`` by relative name and size: equal on every machine that holds the same set."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for path in files:
        digest.update(f"{path.relative_to(folder).as_posix()}\0{path.stat().st_size}\n".encode())
    return {"files": len(files), "sha256": digest.hexdigest()[:16]}


def evit_version() -> str:
    try:
        return metadata.version("evit-deploy")
    except metadata.PackageNotFoundError:
        return "unknown"


def configuration(request: BenchmarkRequest, model: str, calib_samples: int | None,
                  weights_sha256: str | None) -> dict[str, Any]:
    """The benchmark's identity (plus, under ``paths``, where its inputs were here)."""
    folders = {"data": request.data, "calib": request.calib, "images": request.images}
    return {
        "model": model,
        "weights": ({"sha256": weights_sha256} if weights_sha256 is not None
                    else {"random": True, "seed": request.seed}),
        "data": None if request.data is None else {**folder_fingerprint(request.data), "format": request.format,
                                                   "limit": request.limit},
        "calib": None if request.calib is None else {**folder_fingerprint(request.calib), "samples": calib_samples},
        "verify": {"images": None if request.images is None else folder_fingerprint(request.images),
                   "samples": request.samples, "seed": request.seed},
        "profile": {"threads": request.threads, "warmup": request.warmup, "iters": request.iters},
        "max_drop": request.max_drop,
        "evit": evit_version(),
        PATHS: {name: str(path) for name, path in {**folders, "weights": request.weights}.items() if path is not None},
    }


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """What differs between two configurations, e.g. ``["profile (iters 20 vs 50)"]``; paths do not count."""
    found = []
    for key in sorted(set(a) | set(b)):
        if key == PATHS or a.get(key) == b.get(key):
            continue
        left, right = a.get(key), b.get(key)
        if isinstance(left, dict) and isinstance(right, dict):
            inner = [f"{k} {left.get(k)} vs {right.get(k)}" for k in sorted(set(left) | set(right))
                     if left.get(k) != right.get(k)]
            found.append(f"{key} ({'; '.join(inner)})")
        else:
            found.append(f"{key} ({left} vs {right})")
    return found
