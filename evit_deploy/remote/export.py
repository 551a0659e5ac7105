"""``evit export MODEL --target trt --device NAME``: plan here, engine there, both back here.

1. Ask the device which TensorRT it has (and its GPU); the plan targets that major.
2. Export here, plan only: typed ONNX + ``NAME.trt-plan.json`` (no torch on the device).
3. Upload it (content-addressed), build the engine on the device (``trt_build``), fetch the
   engine and its layer information.
4. Publish locally: the engine is the primary file, the typed ONNX and the plan stay beside
   it, and the manifest (written last) records the device, its GPU, TensorRT and state.

Other targets with ``--device`` export here with the device preset's defaults: only
TensorRT engines must be built on the machine that runs them.
"""
from __future__ import annotations

import json
import re
import shutil
import tarfile
import tempfile
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from io import BytesIO
from pathlib import Path

from evit_deploy.devices import Inventory, load_inventory
from evit_deploy.errors import RuntimeMissing, UsageError
from evit_deploy.manifest import manifest_path_for
from evit_deploy.pipeline.export import ExportResult, export_here
from evit_deploy.remote.session import DeviceSession
from evit_deploy.requests import ExportRequest

Progress = Callable[[str], None]


def trt_option_version(found: str) -> str:
    """The device's TensorRT ('8.6.2.3', '10.3.0') -> the plan's ``--trt-version`` ('8.6', '10')."""
    parts = re.findall(r"\d+", found)
    if parts and parts[0] in ("10", "11"):
        return parts[0]
    if len(parts) > 1 and parts[0] == "8" and parts[1] in ("5", "6"):
        return f"8.{parts[1]}"
    raise UsageError(f"TensorRT {found} on the device is not one evit plans for (8.5, 8.6, 10, 11); upgrade JetPack "
                     "or TensorRT there")


def export_on_device(request: ExportRequest, *, inventory: Inventory | None = None,
                     progress: Progress = lambda message: None) -> ExportResult:
    """A TensorRT engine for ``request.device``, built there, published in ``request.out`` with its manifest."""
    from evit_deploy.manifest import FileEntry, publish, sha256_path, size_of, staging_dir

    inv = inventory or load_inventory(request.inventory)
    entry = inv.get(str(request.device).partition(":")[0])
    session = DeviceSession(entry, progress=progress)
    hello = session.hello(full=True, runtime_device="cuda")
    system, state = hello.get("system", {}), hello.get("state", {})
    found = (system.get("runtimes") or {}).get("tensorrt") or state.get("tensorrt")
    if not found:
        raise RuntimeMissing(f"device {entry.name} has no TensorRT: engines are built where they run; install it there "
                             "(JetPack ships it; elsewhere pip install 'evit-deploy[tensorrt]')")
    version = trt_option_version(found)
    options = dict(request.options)
    asked = options.get("trt_version")
    if asked is not None and trt_option_version(str(asked)) != version:
        raise UsageError(f"--trt-version {asked} but device {entry.name} has TensorRT {found}; drop the flag (the "
                         "plan follows the device) or build for another device")
    options.update(trt_version=version, plan_only=True)
    options.setdefault("platform", "jetson" if state.get("kind") == "jetson" else "datacenter")
    out_dir = request.out
    with tempfile.TemporaryDirectory(prefix="evit-trt-plan-") as tmp:
        progress(f"planning for TensorRT {found} on {entry.name}")
        planned = export_here(request.replace(target="trt", out=tmp, options=options, device=None, inventory=None),
                              progress=progress)
        placed = session.place(planned.artifact, planned.manifest, runtime_device="cuda", check_runtime=False)
        build_dir = f"{entry.workdir.rstrip('/')}/builds/{uuid.uuid4().hex}"
        progress(f"building the engine on {entry.name}")
        built = session.transport.call(["build-trt", placed.path, "--out", build_dir, "--options",
                                        json.dumps({"timeout": entry.command_timeout})],
                                       timeout=entry.command_timeout, what="building the engine").header
        progress("fetching the engine")
        fetched = session.transport.call(["fetch", built["dir"], *built["files"], "--remove"],
                                         timeout=entry.command_timeout, what="fetching the engine")
        with staging_dir(out_dir) as staging:
            names = _untar(fetched.payload, staging, set(built["files"]))
            for file in planned.manifest.files:
                shutil.copy2(planned.artifact.parent / file.path, staging / file.path)
            engine = staging / built["files"][0]
            order = [engine] + [staging / n for n in names[1:]] + [staging / f.path for f in planned.manifest.files]
            trt_version = str(built.get("tensorrt") or found)
            device_build = {
                "device": entry.name, "address": entry.address, "preset": entry.preset,
                "gpu": ((built.get("gpus") or system.get("gpus") or [{}])[0]).get("name"),
                "tensorrt": trt_version, "state": built.get("state") or state,
                "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "build_seconds": built.get("seconds"), "builder": built.get("report", {}).get("builder"),
                "remote_dir": built["dir"]}
            note = (f"engine built on {entry.name} ({entry.address}) with TensorRT {trt_version}; "
                    "it runs only on that GPU and TensorRT version")
            before = planned.manifest
            manifest = before.model_copy(update={
                "files": [FileEntry(path=p.name, sha256=sha256_path(p), bytes=size_of(p)) for p in order],
                "versions": {**before.versions, "tensorrt": trt_version},
                "details": {**before.details, "engine": built.get("report", {}), "device_build": device_build},
                "notes": [n for n in before.notes if not n.startswith("plan only:")] + [note],
            })
            artifact = publish(order, out_dir, manifest)
    return ExportResult(artifact, manifest_path_for(artifact), manifest, manifest.export_seconds)


def _untar(payload: bytes, dest: Path, allowed: set[str]) -> list[str]:
    """The fetched files (plain files named as asked, nothing else) into ``dest``, in tar order."""
    names = []
    with tarfile.open(fileobj=BytesIO(payload), mode="r") as tar:
        for member in tar.getmembers():
            if member.name not in allowed or "/" in member.name or not member.isfile():
                raise UsageError(f"the device sent an unexpected file {member.name!r}; refusing it")
            source = tar.extractfile(member)
            assert source is not None
            with (dest / member.name).open("wb") as handle:
                shutil.copyfileobj(source, handle)
            names.append(member.name)
    return names
