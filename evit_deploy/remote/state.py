"""What a device is and what state it is in, read on the device itself (no torch, no root).

A latency means little without the conditions it was measured under: for a Jetson the
power mode (``nvpmodel -q``), whether clocks are locked, the L4T/JetPack and TensorRT
versions; for other machines the CPU governor and model. ``device_state()`` collects
them for every remote result. evit changes nothing unless asked: ``locked_clocks``
runs ``jetson_clocks`` and restores the previous clocks afterwards, and
``PowerSampler`` reads ``tegrastats`` during the timed iterations.
"""
from __future__ import annotations

import glob
import os
import platform
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from evit_deploy.errors import UsageError

TEGRA_RELEASE = Path("/etc/nv_tegra_release")
RUNTIME_PACKAGES = {  # what `evit devices check` reports, per runtime
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-lean"),
    "litert": ("ai-edge-litert", "tflite-runtime"),
    "coreml": ("coremltools",),
}


def _run(argv: list[str], timeout: float = 5) -> str | None:
    """stdout of a small system command, or None when it is missing or fails."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _read(path: str | Path) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip().strip("\x00")
    except OSError:
        return None


def is_jetson() -> bool:
    return TEGRA_RELEASE.is_file()


def l4t_version(text: str | None) -> str | None:
    """'# R36 (release), REVISION: 3.0, GCID: ...' -> '36.3.0'."""
    if not text:
        return None
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def nvpmodel_mode(text: str | None) -> dict[str, Any] | None:
    """``nvpmodel -q`` output ('NV Power Mode: MAXN\\n0') -> {'name': 'MAXN', 'id': 0}."""
    if not text:
        return None
    name = re.search(r"NV Power Mode:\s*(.+)", text)
    ident = re.search(r"^\s*(\d+)\s*$", text, re.MULTILINE)
    return {"name": name.group(1).strip() if name else None, "id": int(ident.group(1)) if ident else None}


def cpu_model() -> str:
    if platform.system() == "Darwin":
        return _run(["sysctl", "-n", "machdep.cpu.brand_string"]) or platform.machine()
    text = _read("/proc/cpuinfo") or ""
    for key in ("model name", "Model", "Hardware"):
        match = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if match:
            return match.group(1).strip()
    return platform.processor() or platform.machine()


def memory_mb() -> int | None:
    if platform.system() == "Darwin":
        value = _run(["sysctl", "-n", "hw.memsize"])
        return int(value) // 2**20 if value and value.isdigit() else None
    match = re.search(r"MemTotal:\s*(\d+) kB", _read("/proc/meminfo") or "")
    return int(match.group(1)) // 1024 if match else None


def cpu_governor() -> str | None:
    governors = {_read(p) for p in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor")}
    governors.discard(None)
    return ",".join(sorted(g for g in governors if g)) or None


def clocks_locked(sys_root: str = "/sys") -> bool | None:
    """True when every online CPU core and the GPU are pinned at their current maximum.

    That is what ``jetson_clocks`` does (min = max under the active power mode); None when
    the machine exposes no cpufreq to tell.
    """
    seen = False
    for cpu in glob.glob(f"{sys_root}/devices/system/cpu/cpu[0-9]*"):
        if _read(f"{cpu}/online") == "0":
            continue
        low, high = _read(f"{cpu}/cpufreq/scaling_min_freq"), _read(f"{cpu}/cpufreq/scaling_max_freq")
        if low is None or high is None:
            continue
        seen = True
        if low != high:
            return False
    if not seen:
        return None
    for gpu in glob.glob(f"{sys_root}/class/devfreq/*"):
        if any(tag in gpu for tag in ("gpu", "ga10b", "gv11b", "gp10b", "gb10b")):
            low, high = _read(f"{gpu}/min_freq"), _read(f"{gpu}/max_freq")
            if low is not None and high is not None and low != high:
                return False
    return True


def package_version(*names: str) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def tensorrt_version() -> str | None:
    found = package_version(*RUNTIME_PACKAGES["tensorrt"])
    if found:
        return found
    for package in ("tensorrt", "libnvinfer10", "libnvinfer8"):
        value = _run(["dpkg-query", "-W", "-f=${Version}", package])
        if value:
            return value.split("-")[0].split("+")[0]
    return None


def gpus() -> list[dict[str, Any]]:
    text = _run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"])
    found = []
    for line in (text or "").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[0]:
            memory = int(parts[1]) if parts[1].isdigit() else None
            found.append({"name": parts[0], "memory_mb": memory, "driver": parts[2]})
    if not found and is_jetson():
        found.append({"name": board_model() or "Jetson integrated GPU", "memory_mb": memory_mb(), "shared": True})
    if not found and platform.system() == "Darwin" and platform.machine() == "arm64":
        found.append({"name": f"{cpu_model()} GPU (integrated)", "memory_mb": memory_mb(), "shared": True})
    return found


def board_model() -> str | None:
    return _read("/proc/device-tree/model")


def device_state() -> dict[str, Any]:
    """The conditions a measurement on this machine was taken under."""
    state: dict[str, Any] = {"cpu": cpu_model(), "cores": os.cpu_count(), "cpu_governor": cpu_governor()}
    if is_jetson():
        state.update(
            kind="jetson",
            board=board_model(),
            l4t=l4t_version(_read(TEGRA_RELEASE)),
            jetpack=(_run(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"]) or None),
            power_mode=nvpmodel_mode(_run(["nvpmodel", "-q"])),
            clocks_locked=clocks_locked(),
            tensorrt=tensorrt_version(),
        )
    else:
        state["kind"] = {"Darwin": "mac"}.get(platform.system(), platform.system().lower())
        board = board_model()
        if board:
            state["board"] = board
    return state


def state_summary(state: dict[str, Any]) -> str:
    """One short cell for a table: 'MAXN · clocks locked' or 'governor performance'."""
    if not state:
        return "-"
    if state.get("kind") == "jetson":
        mode = (state.get("power_mode") or {}).get("name") or "mode ?"
        locked = {True: "clocks locked", False: "clocks not locked"}.get(state.get("clocks_locked"), "clocks ?")
        return f"{mode} · {locked}"
    governor = state.get("cpu_governor")
    return f"{state.get('kind', '?')} · " + (f"governor {governor}" if governor else "no cpufreq governor")


def system_info() -> dict[str, Any]:
    """For ``evit devices check``: the machine, its memory and GPUs, and installed runtimes."""
    return {
        "hostname": platform.node(),
        "os": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_mb": memory_mb(),
        "gpus": gpus(),
        "runtimes": {name: package_version(*packages) for name, packages in RUNTIME_PACKAGES.items()}
        | ({"tensorrt": tensorrt_version()} if is_jetson() else {}),
    }


# --------------------------------------------------------------------------- clocks


def _as_root(argv: list[str], what: str) -> None:
    command = argv if os.geteuid() == 0 else ["sudo", "-n", *argv]
    if shutil.which(argv[0]) is None:
        raise UsageError(f"{what}: {argv[0]} not found on the device (is this a Jetson with JetPack?)")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as err:
        raise UsageError(f"{what}: {' '.join(command)} failed: {err}") from None
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        raise UsageError(f"{what}: `{' '.join(command)}` failed ({why[-1] if why else done.returncode}); "
                         "evit needs root there for jetson_clocks: allow it with sudo without a password")


@contextmanager
def locked_clocks() -> Iterator[None]:
    """``jetson_clocks`` for the duration, then the clocks that were there before."""
    if not is_jetson():
        raise UsageError(f"--lock-clocks is supported on Jetson devices only (jetson_clocks); {platform.node()} is "
                         f"{cpu_model()}: set its CPU governor to performance yourself instead")
    store = Path(tempfile.mkdtemp(prefix="evit-clocks-")) / "clocks.conf"
    _as_root(["jetson_clocks", "--store", str(store)], "--lock-clocks")
    _as_root(["jetson_clocks"], "--lock-clocks")
    try:
        yield
    finally:
        _as_root(["jetson_clocks", "--restore", str(store)], "restoring clocks after --lock-clocks")
        shutil.rmtree(store.parent, ignore_errors=True)


# --------------------------------------------------------------------------- power

_RAIL = re.compile(r"\b((?:VDDQ?|POM|VIN)_[A-Z0-9_]+) (\d+)(?:mW)?/(\d+)(?:mW)?")
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")  # whole-module input power, where the board reports it


def parse_tegrastats(line: str) -> tuple[float, str] | None:
    """Board power in watts from one tegrastats line, and which rail(s) it is.

    Boards that report the module's input (VDD_IN on Orin Nano/NX and Xavier, POM_5V_IN on
    Nano/TX1) give that; others (AGX Orin) the sum of their rails.
    """
    rails = {name: int(now) for name, now, _ in _RAIL.findall(line)}
    if not rails:
        return None
    for total in TOTAL_RAILS:
        if total in rails:
            return rails[total] / 1000.0, total
    return sum(rails.values()) / 1000.0, "+".join(rails)


class PowerSampler:
    """Runs ``tegrastats`` and keeps the readings taken between ``begin()`` and ``end()``."""

    def __init__(self, command: list[str] | None = None, interval_ms: int = 50) -> None:
        self.interval_ms = interval_ms
        self.command = command or ["tegrastats", "--interval", str(interval_ms)]
        self.samples: list[float] = []
        self.rail: str | None = None
        self.window: tuple[float, float] | None = None
        self._recording = False
        self._start = 0.0
        self.proc: subprocess.Popen[str] | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> PowerSampler:
        if shutil.which(self.command[0]) is None:
            raise UsageError(f"--power needs {self.command[0]} on the device (Jetson with JetPack)")
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            reading = parse_tegrastats(line)
            if reading is not None and self._recording:
                self.samples.append(reading[0])
                self.rail = reading[1]

    def begin(self) -> None:
        self._start = time.perf_counter()
        self._recording = True

    def end(self) -> None:
        if self._recording:
            self._recording = False
            self.window = (self._start, time.perf_counter())

    def stop(self) -> None:
        self.end()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.thread is not None:
            self.thread.join(timeout=5)

    def summary(self, throughput_ips: float) -> dict[str, Any]:
        seconds = (self.window[1] - self.window[0]) if self.window else 0.0
        data: dict[str, Any] = {"source": "tegrastats", "rail": self.rail, "samples": len(self.samples),
                                "interval_ms": self.interval_ms, "window_s": round(seconds, 3)}
        if not self.samples:
            data.update(mean_w=None, max_w=None, mj_per_image=None,
                        note="no reading during the timed run: raise --iters so it lasts over a second")
            return data
        mean = sum(self.samples) / len(self.samples)
        data.update(mean_w=round(mean, 3), max_w=round(max(self.samples), 3),
                    mj_per_image=round(mean * 1e3 / throughput_ips, 3) if throughput_ips else None,
                    note="board power including idle draw")
        if len(self.samples) < 5:
            data["note"] += f"; only {len(self.samples)} reading(s): raise --iters for a steadier figure"
        return data


class ProfileConditions:
    """``--lock-clocks`` and ``--power`` around a profile run (used by ``api.profile``)."""

    def __init__(self, *, lock_clocks: bool, power: bool, warmup: int,
                 on_iteration: Callable[[int, int], None], sampler: PowerSampler | None = None) -> None:
        self.lock_clocks, self.power, self.warmup = lock_clocks, power, warmup
        self.on_iteration = on_iteration
        self.sampler = sampler
        self.state: dict[str, Any] | None = None

    @contextmanager
    def applied(self) -> Iterator[ProfileConditions]:
        if self.power and self.sampler is None:
            if not is_jetson():
                raise UsageError(f"--power is supported on Jetson devices only (tegrastats); {platform.node()} is "
                                 f"{cpu_model()}, where evit cannot read board power")
            self.sampler = PowerSampler()
        with locked_clocks() if self.lock_clocks else _nothing():
            self.state = device_state()
            if self.sampler is not None:
                self.sampler.start()
                if self.warmup == 0:
                    self.sampler.begin()
            try:
                yield self
            finally:
                if self.sampler is not None:
                    self.sampler.stop()

    def tick(self, done: int, total: int) -> None:
        if self.sampler is not None:
            if done == self.warmup:
                self.sampler.begin()
            if done == total:
                self.sampler.end()
        self.on_iteration(done, total)

    def annotate(self, host: dict[str, Any], throughput_ips: float) -> None:
        if self.state is not None:
            host["state"] = {**self.state, "clocks_locked_by_evit": self.lock_clocks}
        if self.sampler is not None:
            host["power"] = self.sampler.summary(throughput_ips)


@contextmanager
def _nothing() -> Iterator[None]:
    yield
