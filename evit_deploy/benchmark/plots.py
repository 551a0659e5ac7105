"""The two benchmark plots (matplotlib, imported only here):

* ``latency_vs_accuracy.png``: p50 latency against the task metric on ``--data`` (else agreement with
  PyTorch), the Pareto front marked: the rows nothing else beats on both.
* ``latency.png``: p50 latency per row as bars (whiskers to p90), grouped by device, PyTorch eager beside.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, NamedTuple

from evit_deploy.benchmark.render import UNSTABLE, baselines_shown, short_need
from evit_deploy.benchmark.results import BenchmarkResult, Row
from evit_deploy.manifest import save_figure_atomic

SCATTER, BARS = "latency_vs_accuracy.png", "latency.png"
MATPLOTLIB_MISSING = "plots left out: matplotlib is not installed (pip install matplotlib)"
COLORS = {"onnx": "tab:blue", "tflite": "tab:orange", "coreml": "tab:green", "trt": "tab:red", "torch": "tab:gray"}


class Point(NamedTuple):
    label: str
    target: str
    latency_ms: float
    accuracy: float
    trusted: bool


def matplotlib_missing() -> str | None:
    return None if importlib.util.find_spec("matplotlib") else MATPLOTLIB_MISSING


def _accuracy(row: Row, result: BenchmarkResult) -> float | None:
    """The y of a row: its task metric on --data, else its agreement with PyTorch (%)."""
    if result.metric_name:
        return row.metric.artifact if row.metric else None
    task = (row.parity or {}).get("task", {})
    for name in ("pixel_agreement", "top1_agreement"):
        if name in task:
            return 100 * task[name]
    return None


def _label(row: Row) -> str:
    return f"{row.target} {row.precision} {row.size}" + ("" if row.device == "cpu" else f" @{row.device}")


def points(result: BenchmarkResult) -> tuple[list[Point], list[str]]:
    """Plottable rows and baselines, and a line per row left out (with why)."""
    found, left_out = [], []
    for row in result.rows:
        accuracy = _accuracy(row, result)
        if row.latency is not None and accuracy is not None:
            found.append(Point(_label(row), row.target, row.latency.p50_ms, accuracy, row.latency.trustworthy))
        else:
            why = (short_need(row.latency_note) if row.latency_note else row.status if row.status != "ok"
                   else "no accuracy figure" if row.latency is not None else "not timed")
            left_out.append(f"{_label(row)}: {why}")
    for baseline in baselines_shown(result):
        accuracy = baseline.metric if result.metric_name else 100.0
        if baseline.latency is not None and accuracy is not None:
            size = f"{baseline.resolution[0]}x{baseline.resolution[1]}"
            found.append(Point(f"PyTorch eager {size}", "torch", baseline.latency.p50_ms, accuracy,
                               baseline.latency.trustworthy))
    return found, left_out


TIE = 0.005  # half the table's 0.01: accuracies it shows as equal are equal here too


def pareto_front(found: list[Point]) -> list[Point]:
    """Points no other point beats on both axes (faster and at least as accurate), fastest first. An fp32
    export scores 1e-4 points above or below PyTorch from rounding alone; that is a tie, not a reason to
    put a slower artifact on the front."""
    front: list[Point] = []
    for point in sorted(found, key=lambda p: (p.latency_ms, -p.accuracy)):
        if not front or point.accuracy > front[-1].accuracy + TIE:
            front.append(point)
    return front


def _log_when_wide(set_scale: Any, values: list[float]) -> None:
    """A log axis when the figures span more than 20x (eager PyTorch beside a tuned runtime)."""
    if values and min(values) > 0 and max(values) / min(values) > 20:
        set_scale("log")


def write_plots(result: BenchmarkResult, out: Path) -> list[Path]:
    if matplotlib_missing() is not None:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, draw in ((SCATTER, _scatter), (BARS, _bars)):
        figure = draw(plt, result)
        try:
            save_figure_atomic(figure, out / name)
        finally:
            plt.close(figure)
        written.append(out / name)
    return written


def _scatter(plt: Any, result: BenchmarkResult) -> Any:
    found, left_out = points(result)
    figure, axis = plt.subplots(figsize=(9, 6))
    for point in found:
        color = COLORS.get(point.target, "tab:purple")
        axis.scatter(point.latency_ms, point.accuracy, s=46, color=color if point.trusted else "none",
                     edgecolors=color, zorder=3)
        axis.annotate(point.label + ("" if point.trusted else UNSTABLE), (point.latency_ms, point.accuracy),
                      textcoords="offset points", xytext=(5, 4), fontsize=7)
    front = pareto_front(found)
    if front:
        axis.step([p.latency_ms for p in front], [p.accuracy for p in front], where="post", color="black",
                  linewidth=1, alpha=0.6, zorder=2, label="Pareto front")
        axis.scatter([p.latency_ms for p in front], [p.accuracy for p in front], s=180, facecolors="none",
                     edgecolors="black", zorder=4)
        axis.legend(loc="lower right", fontsize=8)
    else:
        axis.text(0.5, 0.5, "no row has both a latency and an accuracy figure here", ha="center",
                  transform=axis.transAxes)
    _log_when_wide(axis.set_xscale, [p.latency_ms for p in found])
    axis.set_xlabel("p50 latency, ms (lower is better)" + (f"; {UNSTABLE} or hollow: unstable" if any(
        not p.trusted for p in found) else ""))
    axis.set_ylabel(f"{result.metric_name} %" if result.metric_name else "agreement with PyTorch %")
    axis.grid(alpha=0.3)
    axis.set_title(f"{result.model}: latency vs accuracy")
    if left_out:
        axis.text(1.01, 1.0, "not plotted:\n" + "\n".join(left_out), transform=axis.transAxes, fontsize=7,
                  va="top")
        figure.subplots_adjust(right=0.7)
    return figure


def _bars(plt: Any, result: BenchmarkResult) -> Any:
    bars: list[tuple[str, str, float | None, float | None, str]] = []  # label, target, p50, p90, note
    for baseline in baselines_shown(result):
        latency = baseline.latency
        size = f"{baseline.resolution[0]}x{baseline.resolution[1]}"
        bars.append((f"PyTorch eager {size} @{baseline.device}", "torch", latency.p50_ms if latency else None,
                     latency.p90_ms if latency else None, "" if latency else "not timed"))
    for row in sorted(result.rows, key=lambda r: (r.device, r.sort_key())):
        latency = row.latency
        note = ("" if latency else short_need(row.latency_note) if row.latency_note else row.status)
        bars.append((f"{row.target} {row.precision} {row.size} @{row.device}", row.target,
                     latency.p50_ms if latency else None, latency.p90_ms if latency else None, note))
    figure, axis = plt.subplots(figsize=(9, max(3.0, 0.32 * len(bars) + 1.2)))
    positions = list(range(len(bars)))[::-1]
    for y, (label, target, p50, p90, note) in zip(positions, bars):
        if p50 is None:
            axis.text(0, y, f" {note}", va="center", fontsize=7, color="gray")
            continue
        axis.barh(y, p50, color=COLORS.get(target, "tab:purple"), height=0.7)
        axis.errorbar(p50, y, xerr=[[0], [max(0.0, (p90 or p50) - p50)]], color="black", capsize=2, linewidth=0.8)
        axis.text(p50, y, f" {p50:.1f}", va="center", fontsize=7)
    _log_when_wide(axis.set_xscale, [b[2] for b in bars if b[2] is not None])
    axis.set_yticks(positions, [b[0] for b in bars], fontsize=7)
    axis.set_xlabel("p50 latency, ms (whisker: p90)")
    axis.set_title(f"{result.model}: latency per target and device")
    axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return figure
