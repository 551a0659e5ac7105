"""A Jetson measurement's conditions: clocks locked around it, module power sampled during it.

evit changes nothing unless asked: ``locked_clocks`` runs ``jetson_clocks`` and restores the
previous clocks afterwards (on any failure after ``--store`` too), and ``PowerSampler`` reads
``tegrastats`` during the timed iterations. ``ProfileConditions`` applies both to a profile.
"""
from __future__ import annotations

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
from pathlib import Path
from typing import Any

from evit_deploy.errors import EvitError, UsageError
from evit_deploy.machine import cpu_model, device_command, device_state, is_jetson, run_text


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
    if os.geteuid() != 0 and run_text(["sudo", "-n", "-l", "tegrastats"]) is not None:
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
