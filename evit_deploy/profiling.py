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

    def spread(self) -> Spread:
        """How far apart the timed runs were, and whether that makes p50 untrustworthy."""
        return Spread.of(self)


# Beyond these the runs disagree too much for p50 to stand for the artifact: a quiet machine gives
# p90/p50 ~1.05 and std/mean ~0.05; a busy one gave p50 684 ms with min 299 ms and std 167 ms (issue 17).
SPREAD_LIMITS = {"p90_over_p50": 1.25, "std_over_mean": 0.15, "p50_over_min": 1.5}


@dataclass
class Spread:
    """Dispersion of the timed runs: ratios, and the reasons (empty when none) not to trust p50."""

    p90_over_p50: float
    std_over_mean: float
    p50_over_min: float
    reasons: list[str] = field(default_factory=list)

    @property
    def trustworthy(self) -> bool:
        return not self.reasons

    @classmethod
    def of(cls, stats: LatencyStats) -> Spread:
        def ratio(a: float, b: float) -> float:
            return a / b if b > 0 else float("inf")

        ratios = {"p90_over_p50": ratio(stats.p90, stats.p50), "std_over_mean": ratio(stats.std, stats.mean),
                  "p50_over_min": ratio(stats.p50, stats.min)}
        said = {"p90_over_p50": "p90 is {:.2f}x p50", "std_over_mean": "std is {:.0%} of the mean",
                "p50_over_min": "p50 is {:.2f}x the fastest run"}
        reasons = [said[k].format(v) for k, v in ratios.items() if v > SPREAD_LIMITS[k]]
        return cls(**{k: round(v, 4) for k, v in ratios.items()}, reasons=reasons)

    def summary(self) -> str:
        """``ok`` or one line saying why the figures are not to be trusted."""
        if self.trustworthy:
            return "ok"
        return (f"unstable: {', '.join(self.reasons)} (a busy machine or changing clocks); rerun on a quiet machine "
                "or with more --iters before comparing")

    def to_dict(self) -> dict[str, Any]:
        return {"trustworthy": self.trustworthy, "p90_over_p50": self.p90_over_p50,
                "std_over_mean": self.std_over_mean, "p50_over_min": self.p50_over_min,
                "limits": dict(SPREAD_LIMITS), "reasons": list(self.reasons)}


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
    dims: dict[str, int] = field(default_factory=dict)  # sizes of the graph's named dims it was timed at

    @property
    def spread(self) -> Spread:
        return self.latency_ms.spread()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["per_layer"] = [asdict(layer) for layer in self.per_layer]
        data["spread"] = self.spread.to_dict()
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
