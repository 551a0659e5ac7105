"""Timing harness: latency statistics, throughput, load and first-inference time, memory.

Every runner is timed by the same loop, so figures of two targets differ only by the
runtime. Peak RSS is the process's high-water mark (``getrusage``), which is why the
artifact path never imports torch: the number is the runtime's, not PyTorch's.
"""
from __future__ import annotations

import os
import platform
import resource
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from evit_deploy.contracts import LayerTiming, Runner


@dataclass
class LatencyStats:
    p50: float
    p90: float
    p99: float
    mean: float
    std: float
    min: float
    max: float

    @classmethod
    def of(cls, samples_ms: list[float]) -> LatencyStats:
        a = np.asarray(samples_ms, dtype=np.float64)
        p50, p90, p99 = np.percentile(a, [50, 90, 99])
        return cls(float(p50), float(p90), float(p99), float(a.mean()), float(a.std()), float(a.min()), float(a.max()))


@dataclass
class ProfileResult:
    """What ``profile`` measured; ``to_dict`` is the JSON contract."""

    artifact: str
    model: str
    target: str
    precision: str
    batch: int
    input_shape: list[int]
    threads: int | None
    warmup: int
    iters: int
    latency_ms: LatencyStats
    throughput_ips: float
    load_s: float
    first_inference_ms: float
    peak_rss_mb: float
    rss_before_load_mb: float
    runner: dict[str, Any] = field(default_factory=dict)
    host: dict[str, Any] = field(default_factory=dict)
    per_layer: list[LayerTiming] = field(default_factory=list)
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["per_layer"] = [asdict(layer) for layer in self.per_layer]
        return data


def warn_oversubscribed(threads: int | None) -> None:
    """More runtime threads than cores only makes them wait for each other: say so (it still runs)."""
    cores = os.cpu_count()
    if threads and cores and threads > cores:
        warnings.warn(f"--threads {threads} is more than the {cores} CPU core(s) here: the runtime's threads will "
                      "wait for each other and every figure will be slower than with --threads "
                      f"{cores} or fewer", UserWarning, stacklevel=2)


def rss_mb() -> float:
    """Current resident set size (Linux /proc), falling back to the high-water mark."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return peak_rss_mb()


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def host_info() -> dict[str, Any]:
    """Enough about the machine to tell two profiles apart."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"hostname": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "os": platform.platform(),
            "python": platform.python_version()}


def measure(
    make_runner: Callable[[], Runner],
    feed: dict[str, np.ndarray],
    *,
    warmup: int,
    iters: int,
    per_layer: bool = False,
    on_iteration: Callable[[int, int], None] = lambda done, total: None,
) -> dict[str, Any]:
    """Load, run once (first inference), warm up, then time ``iters`` runs."""
    rss_before = rss_mb()
    start = time.perf_counter()
    runner = make_runner().__enter__()
    try:
        load_s = time.perf_counter() - start
        prepared = runner.prepare(feed)
        start = time.perf_counter()
        runner.infer(prepared)
        first_ms = (time.perf_counter() - start) * 1e3
        total = warmup + iters
        for i in range(warmup):
            runner.infer(prepared)
            on_iteration(i + 1, total)
        samples = []
        for i in range(iters):
            start = time.perf_counter()
            runner.infer(prepared)
            samples.append((time.perf_counter() - start) * 1e3)
            on_iteration(warmup + i + 1, total)
        layers = runner.per_layer(prepared, max(1, min(iters, 20))) if per_layer else []
        stats = LatencyStats.of(samples)
        return {
            "latency_ms": stats,
            "throughput_ips": 1e3 * len(next(iter(feed.values()))) / stats.mean,
            "load_s": load_s,
            "first_inference_ms": first_ms,
            "peak_rss_mb": peak_rss_mb(),
            "rss_before_load_mb": rss_before,
            "runner": runner.describe(),
            "host": host_info(),
            "per_layer": layers,
        }
    finally:
        runner.close()
