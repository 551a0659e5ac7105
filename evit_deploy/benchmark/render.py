"""A ``BenchmarkResult`` as a table: the same columns and cells for the terminal (rich) and Markdown."""
from __future__ import annotations

import re

from rich.table import Table

from evit_deploy.benchmark.results import OK, SKIPPED, Baseline, BenchmarkResult, Row

UNSTABLE = "*"  # beside a latency whose runs disagree too much to trust (see the notes)
_STATUS_STYLE = {OK: "green", SKIPPED: "dim"}


def headers(result: BenchmarkResult) -> list[str]:
    metric = [result.metric_name or "metric", "drop"] if result.metric_name else []
    return ["target", "precision", "input", "device", "status", "size MB", "export s", "parity", *metric,
            "p50 ms", "img/s", "speed-up", "note"]


def short_need(reason: str) -> str:
    """``Core ML latency needs macOS with ...`` -> ``needs macOS``: what the latency cell can hold."""
    found = re.search(r"\bneeds ((?:an? )?(?:NVIDIA )?[\w.+-]+)", reason)
    return f"needs {found[1]}" if found else "not timed here"


def _parity(row: Row) -> str:
    if row.parity is None:
        return "-"
    task = row.parity.get("task", {})
    figure = next(((name, task[name]) for name in ("pixel_agreement", "top1_agreement") if name in task), None)
    shown = f" {'px' if figure[0] == 'pixel_agreement' else 'top-1'} {100 * figure[1]:.2f}%" if figure else ""
    if row.parity["passed"]:
        return "✓" + shown
    return "✗ " + ", ".join(name.split(".")[-1] for name in row.parity["failed"])


def _number(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def row_cells(result: BenchmarkResult, row: Row) -> list[str]:
    latency = row.latency
    if latency is not None:
        p50 = f"{latency.p50_ms:.1f}" + ("" if latency.trustworthy else UNSTABLE)
    else:
        p50 = short_need(row.latency_note) if row.latency_note else "-"
    metric = ([_number(row.metric.artifact if row.metric else None, "{:.2f}"),
               _number(row.metric.drop if row.metric else None, "{:+.2f}")] if result.metric_name else [])
    export = _number(row.export_s, "{:.1f}") + (" (reused)" if row.reused else "")
    return [row.target, row.precision, row.size, row.device, row.status,
            _number(None if row.size_bytes is None else row.size_bytes / 1e6, "{:.1f}"), export, _parity(row),
            *metric, p50, _number(latency.throughput_ips if latency else None, "{:.1f}"),
            _number(row.speedup, "{:.2f}x"), row.reason or ""]


def baseline_cells(result: BenchmarkResult, baseline: Baseline) -> list[str]:
    latency = baseline.latency
    p50 = "-" if latency is None else f"{latency.p50_ms:.1f}" + ("" if latency.trustworthy else UNSTABLE)
    metric = [_number(baseline.metric, "{:.2f}"), ""] if result.metric_name else []
    size = f"{baseline.resolution[0]}x{baseline.resolution[1]}"
    return ["torch (eager)", "fp32", size, baseline.device, "baseline", "", "", "", *metric, p50,
            _number(latency.throughput_ips if latency else None, "{:.1f}"), "1.00x" if latency else "-",
            baseline.reason or ""]


def baselines_shown(result: BenchmarkResult) -> list[Baseline]:
    """One eager baseline per resolution and device (merged shards may each bring one)."""
    seen: dict[tuple[tuple[int, ...], str], Baseline] = {}
    for baseline in result.baselines:
        if baseline.latency is not None or baseline.metric is not None:
            seen.setdefault((tuple(baseline.resolution), baseline.device), baseline)
    return sorted(seen.values(), key=lambda b: (tuple(b.resolution), b.device))


def title(result: BenchmarkResult) -> str:
    counts = ", ".join(f"{n} {status}" for status, n in result.counts().items() if n)
    shards = "" if not result.shards else " · shard(s) " + ", ".join(f"{i}/{n}" for i, n in result.shards)
    return f"{result.model} · {len(result.rows)} row(s): {counts}{shards}"


def rich_table(result: BenchmarkResult) -> Table:
    table = Table(title=title(result))
    for name in headers(result):
        table.add_column(name, justify="right" if name in ("size MB", "export s", "p50 ms", "img/s", "speed-up",
                                                           "drop", result.metric_name) else "left")
    for baseline in baselines_shown(result):
        table.add_row(*baseline_cells(result, baseline), style="dim")
    for row in result.rows:
        cells = row_cells(result, row)
        style = _STATUS_STYLE.get(row.status, "red")
        cells[4] = f"[{style}]{cells[4]}[/]"
        table.add_row(*cells)
    return table


def footnotes(result: BenchmarkResult) -> list[str]:
    """The lines under the table: unstable latencies, what was not timed and why, the run's notes."""
    lines = []
    for row in result.rows:
        if row.latency is not None and not row.latency.trustworthy:
            lines.append(f"{UNSTABLE} {row.key}: latency unstable ({', '.join(row.latency.spread)}); "
                         "rerun on a quiet machine before comparing")
    for baseline in baselines_shown(result):
        if baseline.latency is not None and not baseline.latency.trustworthy:
            lines.append(f"{UNSTABLE} PyTorch eager {baseline.resolution[0]}x{baseline.resolution[1]}: latency "
                         f"unstable ({', '.join(baseline.latency.spread)})")
    needs = {row.latency_note for row in result.rows if row.latency_note}
    lines += [f"not timed: {note}" for note in sorted(needs)]
    return lines + list(result.notes)
