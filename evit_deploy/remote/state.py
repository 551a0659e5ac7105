"""What a device is and what state it is in, read on the device itself (no torch, no root).

A latency means little without the conditions it was measured under: for a Jetson the
power mode (``nvpmodel -q``), whether clocks are locked, the L4T/JetPack and TensorRT
versions; for other machines the CPU governor and model. ``device_state()`` collects
them for every remote result. evit changes nothing unless asked: ``locked_clocks``
runs ``jetson_clocks`` and restores the previous clocks afterwards, and
``PowerSampler`` reads ``tegrastats`` during the timed iterations.

Every subprocess here gets ``stdin=DEVNULL``: on a device the worker's stdin is the SSH
protocol stream, and ``jetson_clocks --store`` reads a yes/no from stdin when its file exists.
"""
from __future__ import annotations

import glob
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from evit_deploy.errors import EvitError, UsageError

TEGRA_RELEASE = Path("/etc/nv_tegra_release")
RUNTIME_PACKAGES = {  # what `evit devices check` reports, per runtime
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-lean"),
    "litert": ("ai-edge-litert", "tflite-runtime"),
    "coreml": ("coremltools",),
}


def device_command(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a device tool with its output captured and no stdin (never the worker's SSH stream)."""
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False)


def _run(argv: list[str], timeout: float = 5) -> str | None:
    """stdout of a small system command, or None when it is missing or fails."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = device_command(argv, timeout)
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
    """The GPUs here. A Jetson's GPU is integrated and shares system memory, whatever nvidia-smi
    says: JetPack 6 has nvidia-smi, which reports it as ``Orin (nvgpu), [N/A], ...``."""
    if is_jetson():
        return [{"name": board_model() or "Jetson integrated GPU", "memory_mb": memory_mb(), "shared": True}]
    found = parse_nvidia_smi(_run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                   "--format=csv,noheader,nounits"]))
    if not found and platform.system() == "Darwin" and platform.machine() == "arm64":
        found.append({"name": f"{cpu_model()} GPU (integrated)", "memory_mb": memory_mb(), "shared": True})
    return found


def parse_nvidia_smi(text: str | None) -> list[dict[str, Any]]:
    """``nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader,nounits`` rows."""
    found = []
    for line in (text or "").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[0]:
            memory = int(parts[1]) if parts[1].isdigit() else None
            found.append({"name": parts[0], "memory_mb": memory, "driver": parts[2]})
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


def _as_root(argv: list[str]) -> list[str]:
    return argv if os.geteuid() == 0 else ["sudo", "-n", *argv]


def _jetson_clocks(*args: str) -> str | None:
    """Run ``jetson_clocks ARGS`` as root; None when it worked, else what went wrong (one line).

    NVIDIA's script exits 0 after some failures and says so on stdout ("Error: Failed to restore
    ..."), so its output is read, not only its exit code.
    """
    command = _as_root(["jetson_clocks", *args])
    try:
        done = device_command(command, timeout=60)
    except (OSError, subprocess.SubprocessError) as err:
        return f"`{' '.join(command)}` failed: {err}"
    lines = [line.strip() for line in (done.stdout + "\n" + done.stderr).splitlines() if line.strip()]
    errors = [line for line in lines if line.lower().startswith(("error", "sudo:"))]
    if done.returncode == 0 and not errors:
        return None
    why = (errors or lines or [f"exit {done.returncode}"])[-1]
    if why.startswith("sudo:"):
        why += "; evit needs root for jetson_clocks: allow it with sudo without a password"
    return f"`{' '.join(command)}` failed ({why})"


@contextmanager
def locked_clocks() -> Iterator[None]:
    """``jetson_clocks`` for the duration, then the clocks that were there before.

    jetson_clocks pins the CPUs before it can fail on the GPU ("Error! Unknown GPU!"), so once the
    clocks are stored every failure restores them; a restore problem during another failure is
    added to that failure's line, never raised in its place.
    """
    if not is_jetson():
        raise UsageError(f"--lock-clocks is supported on Jetson devices only (jetson_clocks); {platform.node()} is "
                         f"{cpu_model()}: set its CPU governor to performance yourself instead")
    if shutil.which("jetson_clocks") is None:
        raise UsageError("--lock-clocks: jetson_clocks not found on the device (is this a Jetson with JetPack?)")
    folder = Path(tempfile.mkdtemp(prefix="evit-clocks-"))
    store = folder / "clocks.conf"
    try:
        problem = _jetson_clocks("--store", str(store))
        if problem:
            raise UsageError(f"--lock-clocks: {problem}")
        try:
            problem = _jetson_clocks()
            if problem:
                raise UsageError(f"--lock-clocks: {problem}")
            yield
        except BaseException as err:
            _restore_after(err, store)
            raise
        problem = _jetson_clocks("--restore", str(store))
        if problem:
            raise UsageError(f"restoring clocks after --lock-clocks: {problem}; the clocks may still be locked "
                             f"(run `sudo jetson_clocks --restore` with a stored file, or reboot)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _restore_after(err: BaseException, store: Path) -> None:
    """Restore the clocks while ``err`` is in flight; a restore problem is added to its message."""
    problem = _jetson_clocks("--restore", str(store))
    if problem is None:
        return
    if isinstance(err, EvitError):
        err.args = (f"{err}; restoring the clocks failed too: {problem}",)
    else:
        print(f"warning: restoring clocks after --lock-clocks failed: {problem}", file=sys.stderr)


# --------------------------------------------------------------------------- power

_RAIL = re.compile(r"\b((?:VDDQ?|POM|VIN)_[A-Z0-9_]+) (\d+)(?:mW)?/(\d+)(?:mW)?")
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")  # whole-module input power, where the board reports it
# Jetson AGX Orin reports no module input. NVIDIA's rail table: VDD_GPU_SOC + VDD_CPU_CV + VIN_SYS_5V0
# is the module's power; VDDQ_VDD2_1V8AO is already inside VIN_SYS_5V0 (adding it reads ~5% high).
AGX_ORIN_MODULE = ("VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0")


def parse_tegrastats(line: str) -> tuple[float, str] | None:
    """Module power in watts from one tegrastats line, and which rail(s) it is; None without rails.

    Boards that report the module's input (VDD_IN on Orin Nano/NX and Xavier, POM_5V_IN on
    Nano/TX1) give that; AGX Orin the sum of its three module rails. None of them covers the
    carrier board.
    """
    rails = {name: int(now) for name, now, _ in _RAIL.findall(line)}
    if not rails:
        return None
    for total in TOTAL_RAILS:
        if total in rails:
            return rails[total] / 1000.0, total
    if all(rail in rails for rail in AGX_ORIN_MODULE):
        return sum(rails[r] for r in AGX_ORIN_MODULE) / 1000.0, "+".join(AGX_ORIN_MODULE)
    return sum(rails.values()) / 1000.0, "+".join(rails)


def tegrastats_command(interval_ms: int) -> list[str]:
    """tegrastats as root where that is allowed without a password: some images show the power
    rails to root only (jetson_stats: "tegrastats ... require[s] the sudo elevation")."""
    command = ["tegrastats", "--interval", str(interval_ms)]
    if os.geteuid() != 0 and _run(["sudo", "-n", "-l", "tegrastats"]) is not None:
        return ["sudo", "-n", *command]
    return command


class PowerSampler:
    """Runs ``tegrastats`` and keeps the readings taken between ``begin()`` and ``end()``."""

    def __init__(self, command: list[str] | None = None, interval_ms: int = 50) -> None:
        self.interval_ms = interval_ms
        self.command = command or tegrastats_command(interval_ms)
        self.samples: list[float] = []
        self.lines = 0  # tegrastats lines seen during the window, with or without rails
        self.rail: str | None = None
        self.window: tuple[float, float] | None = None
        self._recording = False
        self._start = 0.0
        self.proc: subprocess.Popen[str] | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> PowerSampler:
        tool = next((part for part in self.command if part not in ("sudo", "-n")), self.command[0])
        if shutil.which(tool) is None:
            raise UsageError(f"--power needs {tool} on the device (Jetson with JetPack)")
        self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            if not self._recording or not line.strip():
                continue
            self.lines += 1
            reading = parse_tegrastats(line)
            if reading is not None:
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
        data: dict[str, Any] = {"source": "tegrastats", "command": " ".join(self.command), "rail": self.rail,
                                "samples": len(self.samples), "lines": self.lines, "interval_ms": self.interval_ms,
                                "window_s": round(seconds, 3)}
        if not self.samples:
            data.update(mean_w=None, max_w=None, mj_per_image=None, note=self._no_reading())
            return data
        mean = sum(self.samples) / len(self.samples)
        data.update(mean_w=round(mean, 3), max_w=round(max(self.samples), 3),
                    mj_per_image=round(mean * 1e3 / throughput_ips, 3) if throughput_ips else None,
                    note="module power including idle draw (the carrier board is not measured)")
        if len(self.samples) < 5:
            data["note"] += f"; only {len(self.samples)} reading(s): raise --iters for a steadier figure"
        return data

    def _no_reading(self) -> str:
        if not self.lines:
            return "no reading during the timed run: raise --iters so it lasts over a second"
        if "sudo" in self.command:
            return (f"tegrastats printed {self.lines} line(s) without power rails, even through sudo: "
                    "this board reports no rails evit reads")
        return (f"tegrastats printed {self.lines} line(s) without power rails: on this image it shows them to "
                "root only; allow `sudo -n tegrastats` for this user (evit then uses it) or run evit as root")


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
