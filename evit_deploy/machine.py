"""What a device is and what state it is in, read on the device itself (no torch, no root).

A latency means little without the conditions it was measured under: for a Jetson the
power mode (``nvpmodel -q``), whether clocks are locked, the L4T/JetPack and TensorRT
versions; for other machines the CPU governor and model. ``device_state()`` collects
them for every remote result. Changing clocks and sampling power during a measurement is
``evit_deploy.jetson``'s job.

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
from pathlib import Path
from typing import Any

from evit_deploy.dependencies import first_version

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


def run_text(argv: list[str], timeout: float = 5) -> str | None:
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
        return run_text(["sysctl", "-n", "machdep.cpu.brand_string"]) or platform.machine()
    text = _read("/proc/cpuinfo") or ""
    for key in ("model name", "Model", "Hardware"):
        match = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if match:
            return match.group(1).strip()
    return platform.processor() or platform.machine()


VNNI_FLAGS = ("avx512_vnni", "avx_vnni")


def u8s8_saturates(cpuinfo: str | None = None, machine: str | None = None) -> bool:
    """Whether ONNX Runtime's u8s8 int8 kernels saturate on this CPU: x86 without VNNI multiplies
    uint8 by int8 with VPMADDUBSW, which adds pairs of products in 16 bits and clips what does not
    fit (AMD Zen 2/3, Intel before Cascade Lake). VNNI CPUs and ARM accumulate in 32 bits."""
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i686", "i386"):
        return False
    text = cpuinfo if cpuinfo is not None else (_read("/proc/cpuinfo") or "")
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.MULTILINE)
    if flags is None:
        return False  # nothing to tell by (macOS, Windows): no claim
    return not set(VNNI_FLAGS) & set(flags.group(1).split())


def memory_mb() -> int | None:
    if platform.system() == "Darwin":
        value = run_text(["sysctl", "-n", "hw.memsize"])
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


def tensorrt_version() -> str | None:
    found = first_version(*RUNTIME_PACKAGES["tensorrt"])
    if found:
        return found
    for package in ("tensorrt", "libnvinfer10", "libnvinfer8"):
        value = run_text(["dpkg-query", "-W", "-f=${Version}", package])
        if value:
            return value.split("-")[0].split("+")[0]
    return None


def gpus() -> list[dict[str, Any]]:
    """The GPUs here. A Jetson's GPU is integrated and shares system memory, whatever nvidia-smi
    says: JetPack 6 has nvidia-smi, which reports it as ``Orin (nvgpu), [N/A], ...``."""
    if is_jetson():
        return [{"name": board_model() or "Jetson integrated GPU", "memory_mb": memory_mb(), "shared": True}]
    found = parse_nvidia_smi(run_text(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
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
            jetpack=(run_text(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"]) or None),
            power_mode=nvpmodel_mode(run_text(["nvpmodel", "-q"])),
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
        "runtimes": {name: first_version(*packages) for name, packages in RUNTIME_PACKAGES.items()}
        | ({"tensorrt": tensorrt_version()} if is_jetson() else {}),
    }
