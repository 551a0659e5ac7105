"""One device, from the host's side: say hello, check it can run the artifact, upload it
once, then profile it there or keep a runner loaded there (``RemoteRunner``).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from evit_deploy.contracts import Runner
from evit_deploy.devices import Device
from evit_deploy.errors import RuntimeMissing, UsageError
from evit_deploy.remote import store
from evit_deploy.remote.protocol import PROTOCOL, pack_arrays, unpack_arrays
from evit_deploy.remote.ssh import Channel, DeviceError, SshTransport
from evit_deploy.spec import TensorInfo

Progress = Callable[[str], None]
HELLO_TIMEOUT = 120.0  # importing evit on a small board can take a while


def local_version() -> str:
    try:
        return metadata.version("evit-deploy")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass
class Placed:
    """An artifact as it sits on a device, and what it took to get it there."""

    path: str  # the primary file on the device
    directory: str
    copy: str  # "uploaded", "manifest" (only the manifest was refreshed) or "skipped"
    uploaded_bytes: int
    upload_s: float
    hello: dict[str, Any] = field(default_factory=dict)


class DeviceSession:
    def __init__(self, device: Device, *, progress: Progress = lambda message: None) -> None:
        self.device = device
        self.transport = SshTransport(device)
        self.progress = progress
        self.connect_s: float | None = None

    @property
    def name(self) -> str:
        return self.device.name

    # -- hello ------------------------------------------------------------------------
    def hello(self, *, target: str | None = None, runtime_device: str = "cpu", full: bool = False,
              probe: tuple[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        self.progress(f"connecting to {self.device.address}")
        args = ["hello", "--runtime-device", runtime_device]
        if full:
            args.append("--full")
        if target:
            args += ["--target", target]
        if probe:
            import json

            args += ["--probe", probe[0], "--expect", json.dumps(probe[1], separators=(",", ":"))]
        start = time.perf_counter()
        reply = self.transport.call(args, timeout=min(HELLO_TIMEOUT, self.device.command_timeout),
                                    what="connecting")
        self.connect_s = time.perf_counter() - start
        hello = reply.header
        self.check_version(hello)
        return hello

    def check_version(self, hello: dict[str, Any]) -> None:
        mine, theirs = local_version(), hello.get("evit")
        if hello.get("protocol") != PROTOCOL or theirs != mine:
            raise DeviceError(
                f"device {self.name}: evit there is {theirs} but this is {mine}; install the same version on the "
                f"device (pip install 'evit-deploy=={mine}') so both sides run the same code")

    # -- artifacts ----------------------------------------------------------------------
    def place(self, artifact: Path, manifest: Any, *, runtime_device: str, lock_clocks: bool = False,
              power: bool = False, check_runtime: bool = True) -> Placed:
        """Check the device can run the artifact, then make sure it is in the device's store."""
        directory = store.remote_dir(self.device.workdir, manifest)
        expect = store.expectation(artifact, manifest)
        hello = self.hello(target=manifest.target if check_runtime else None, runtime_device=runtime_device,
                           probe=(directory, expect))
        reason = (hello.get("targets") or {}).get(manifest.target)
        if check_runtime and reason is not None:
            raise RuntimeMissing(f"device {self.name} cannot run {manifest.target} artifacts: {reason} (install it "
                                 "there, or choose another device)")
        self.check_conditions(hello, lock_clocks=lock_clocks, power=power)
        probe = hello.get("probe") or {}
        missing = list(probe.get("missing", []))
        primary = f"{probe.get('dir', directory)}/{manifest.primary}"
        if not missing and probe.get("manifest_ok"):
            self.progress("artifact already on the device")
            return Placed(primary, probe.get("dir", directory), "skipped", 0, 0.0, hello)
        tar = store.pack(artifact, missing)
        size = tar.stat().st_size
        self.progress(f"uploading {size / 2**20:.1f} MB" if missing else "refreshing the manifest")
        start = time.perf_counter()
        try:
            reply = self.transport.call(
                ["receive", directory], payload=tar, timeout=self.device.command_timeout, what="uploading",
                on_sent=lambda sent: self.progress(f"uploading {sent / 2**20:.1f}/{size / 2**20:.1f} MB"))
        finally:
            tar.unlink(missing_ok=True)
        seconds = time.perf_counter() - start
        return Placed(primary, reply.header.get("dir", directory), "uploaded" if missing else "manifest",
                      size, seconds, hello)

    def check_conditions(self, hello: dict[str, Any], *, lock_clocks: bool, power: bool) -> None:
        state = hello.get("state") or {}
        if state.get("kind") == "jetson":
            return
        what = [flag for flag, on in (("--lock-clocks", lock_clocks), ("--power", power)) if on]
        if what:
            tool = "jetson_clocks" if lock_clocks else "tegrastats"
            verb = "is" if len(what) == 1 else "are"
            raise UsageError(f"{' and '.join(what)} {verb} supported only on Jetson devices ({tool}); device {self.name} "
                             f"is a {state.get('kind', 'non-Jetson')} machine ({state.get('cpu', '?')})")

    def runner(self, placed: Placed, *, runtime_device: str, threads: int | None) -> RemoteRunner:
        return RemoteRunner(self, placed, runtime_device=runtime_device, threads=threads)


class RemoteRunner(Runner):
    """A Runner whose runtime lives on a device: arrays go over ssh, the model stays loaded there."""

    backend = "remote"

    def __init__(self, session: DeviceSession, placed: Placed, *, runtime_device: str, threads: int | None) -> None:
        super().__init__()
        self.session, self.placed = session, placed
        self.runtime_device, self.threads = runtime_device, threads
        self.channel: Channel | None = None
        self.info: dict[str, Any] = {}
        self.state: dict[str, Any] = {}

    def load(self) -> None:
        self.session.progress(f"loading on {self.session.name}")
        args = ["serve", self.placed.path, "--device", self.runtime_device]
        if self.threads:
            args += ["--threads", str(self.threads)]
        self.channel = self.session.transport.open_channel(args, timeout=self.session.device.command_timeout,
                                                           what=f"loading {Path(self.placed.path).name}")
        header, _ = self.channel.receive()
        self.inputs = [TensorInfo.from_dict(t) for t in header.get("inputs", [])]
        self.outputs = [TensorInfo.from_dict(t) for t in header.get("outputs", [])]
        self.info, self.state = header.get("runner", {}), header.get("state", {})

    def _request(self, op: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.channel is None:
            raise UsageError("the remote runner is not loaded (use it as a context manager)")
        _, payload = self.channel.request({"op": op}, pack_arrays(feed), what="running")
        return unpack_arrays(payload)

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Canonical arrays in and out: the device's runner converts layouts itself."""
        return self._request("run", feed)

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._request("infer", feed)

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def describe(self) -> dict[str, Any]:
        d = self.session.device
        return {**self.info, "remote": {"device": d.name, "address": d.address, "preset": d.preset,
                                        "artifact": self.placed.path, "copy": self.placed.copy,
                                        "state": self.state}}
