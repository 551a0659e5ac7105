"""What ``profile``, ``verify`` and ``devices check`` do when ``--device`` names an inventory entry.

- profile: upload (content-addressed), run ``evit profile`` on the device, bring back the
  JSON: the same fields as a local profile, with the device's state in ``host``.
- verify: inputs and the PyTorch reference stay on the host; only the artifact runs on the
  device, through a ``RemoteRunner`` that keeps it loaded between samples.
- several devices: in parallel, one outcome each; a device that fails fails its own row.
  Devices that share an address (one machine, two entries or two runtimes) are timed one at
  a time, so they never measure each other's load.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evit_deploy.artifact import ArtifactHandle, open_artifact
from evit_deploy.contracts import LayerTiming
from evit_deploy.devices import Inventory, is_local, load_inventory, resolve
from evit_deploy.errors import EvitError, UsageError
from evit_deploy.profiling import LatencyStats, ProfileResult
from evit_deploy.remote.session import DeviceSession, RemoteRunner
from evit_deploy.requests import ProfileRequest

Progress = Callable[[str], None]
_LOCKS: dict[tuple[str, int | None], threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _machine_lock(host: str, port: int | None) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault((host, port), threading.Lock())


def _inventory(inventory: Inventory | str | Path | None) -> Inventory:
    return inventory if isinstance(inventory, Inventory) else load_inventory(inventory)


def result_from_dict(data: dict[str, Any]) -> ProfileResult:
    """``ProfileResult.to_dict()`` back into a ProfileResult."""
    known = {f.name for f in dataclasses.fields(ProfileResult)}
    values = {k: v for k, v in data.items() if k in known}
    values["latency_ms"] = LatencyStats(**data["latency_ms"])
    values["per_layer"] = [LayerTiming(**layer) for layer in data.get("per_layer", [])]
    return ProfileResult(**values)


def profile_remote(request: ProfileRequest, *, inventory: Inventory | None = None,
                   on_iteration: Callable[[int, int], None] = lambda done, total: None,
                   progress: Progress = lambda message: None) -> ProfileResult:
    """Profile ``request.artifact`` on the inventory device ``request.device`` (``NAME`` or ``NAME:RUNTIME``)."""
    entry, runtime = resolve(request.device, inventory or load_inventory(request.inventory))
    path = Path(request.artifact)
    handle = open_artifact(path)  # refuses a missing manifest or modified bytes before anything travels
    handle.run_spec(request.resolution, request.batch)  # a shape the artifact cannot take is refused here too
    session = DeviceSession(entry, progress=progress)
    placed = session.place(path, handle.manifest, runtime_device=runtime, lock_clocks=request.lock_clocks,
                           power=request.power)
    there = request.replace(artifact=placed.path, device=runtime, inventory=None,
                            threads=request.threads or entry.default_threads)
    with _machine_lock(entry.host, entry.port):
        progress(f"profiling on {entry.name}")
        reply = session.transport.call(["profile", "--request", there.model_dump_json()],
                                       timeout=entry.command_timeout, what="profiling", on_progress=on_iteration)
    result = result_from_dict(reply.header["result"])
    result.artifact = str(path)
    result.device = request.device
    result.host["remote"] = {"device": entry.name, "address": entry.address, "preset": entry.preset,
                             "runtime_device": runtime, "artifact": placed.path, "copy": placed.copy,
                             "uploaded_bytes": placed.uploaded_bytes, "upload_s": round(placed.upload_s, 3),
                             "connect_s": round(session.connect_s or 0.0, 3)}
    return result


def remote_runner(handle: ArtifactHandle, device: str, *, threads: int | None = None,
                  inventory: Inventory | str | Path | None = None,
                  progress: Progress = lambda message: None) -> RemoteRunner:
    """A Runner for ``handle``'s artifact on an inventory device (connected and uploaded, not yet loaded)."""
    entry, runtime = resolve(device, _inventory(inventory))
    session = DeviceSession(entry, progress=progress)
    placed = session.place(handle.path, handle.manifest, runtime_device=runtime)
    return session.runner(placed, runtime_device=runtime, threads=threads or entry.default_threads)


@dataclass
class Outcome:
    """One device's row of a multi-device profile."""

    device: str
    result: ProfileResult | None = None
    error: str | None = None
    exit_code: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        if self.result is not None:
            return self.result.to_dict()
        return {"device": self.device, "error": self.error, "exit_code": self.exit_code}


def profile_many(
    request: ProfileRequest,
    devices: list[str],
    *,
    on_stage: Callable[[str, str], None] = lambda device, message: None,
    on_iteration: Callable[[str, int, int], None] = lambda device, done, total: None,
) -> list[Outcome]:
    """Profile on every device at once; each outcome holds a result or that device's one-line error."""
    from evit_deploy.pipeline.profile import profile_here

    if len(set(devices)) != len(devices):
        raise UsageError(f"--device lists a device twice: {','.join(devices)}")
    inv = load_inventory(request.inventory)
    for name in devices:  # unknown names are a usage error before anything connects
        if not is_local(name):
            resolve(name, inv)

    def one(name: str) -> Outcome:
        start = time.perf_counter()
        here = request.replace(device=name)
        tick = lambda d, t: on_iteration(name, d, t)
        try:
            if is_local(name):
                result = profile_here(here, on_iteration=tick)
            else:
                result = profile_remote(here, inventory=inv, on_iteration=tick, progress=lambda m: on_stage(name, m))
            on_stage(name, "done")
            return Outcome(name, result, seconds=time.perf_counter() - start)
        except EvitError as err:
            on_stage(name, f"failed: {err}")
            return Outcome(name, error=str(err), exit_code=err.exit_code, seconds=time.perf_counter() - start)

    with ThreadPoolExecutor(max_workers=min(16, len(devices)), thread_name_prefix="evit-device") as pool:
        return list(pool.map(one, devices))


def check_device(name: str, *, inventory: Inventory | str | Path | None = None,
                 progress: Progress = lambda message: None) -> dict[str, Any]:
    """Reachability, evit version, runtimes, CPU/GPU and memory of one device."""
    entry = _inventory(inventory).get(name)
    session = DeviceSession(entry, progress=progress)
    hello = session.hello(full=True, runtime_device=entry.default_runtime_device)
    return {"device": entry.name, "address": entry.address, "preset": entry.preset, "reachable": True,
            "connect_s": round(session.connect_s or 0.0, 3), **hello}
