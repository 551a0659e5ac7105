"""Render results: rich tables for people, JSON and JUnit XML for machines.

Results are data (``ParityReport``, ``ProfileResult``); this module is the only place
that decides how they look.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from evit_deploy.errors import UsageError
from evit_deploy.manifest import write_json_atomic
from evit_deploy.parity import BundleReport, ParityReport
from evit_deploy.profiling import ProfileResult


def write_json(path: Path, data: dict[str, Any]) -> None:
    try:
        write_json_atomic(path, data)
    except OSError as err:
        raise UsageError(f"cannot write {path}: {err.strerror or err}") from None


def junit_xml(report: ParityReport | BundleReport) -> str:
    """One testcase per check, so a CI dashboard shows which metric failed (one suite per graph)."""
    reports = report.graphs if isinstance(report, BundleReport) else {"": report}
    suites = ET.Element("testsuites")
    for graph, one in reports.items():
        suites.append(_junit_suite(one, graph))
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def _junit_suite(report: ParityReport, graph: str) -> ET.Element:
    name = f"evit.verify.{report.model}" + (f".{graph}" if graph else "")
    suite = ET.Element("testsuite", name=name, tests=str(len(report.checks)),
                       failures=str(len(report.failures)), errors="0", skipped="0")
    props = ET.SubElement(suite, "properties")
    for key, value in (("artifact", report.artifact), ("precision", report.precision), ("inputs", report.input_source),
                       ("runner", json.dumps(report.runner))):
        ET.SubElement(props, "property", name=key, value=str(value))
    for check in report.checks:
        case = ET.SubElement(suite, "testcase", classname=f"evit.verify.{Path(report.artifact).name}",
                             name=check.name, time="0")
        if not check.passed:
            failure = ET.SubElement(case, "failure", message=check.describe(), type="ParityFailure")
            failure.text = check.describe()
    return suite


def write_junit(path: Path, report: ParityReport | BundleReport) -> None:
    try:
        path.write_text(junit_xml(report))
    except OSError as err:
        raise UsageError(f"cannot write {path}: {err.strerror or err}") from None


def parity_table(report: ParityReport) -> Table:
    table = Table(title=f"{report.model} · {Path(report.artifact).name} · {report.precision} "
                        f"· {report.samples} sample(s), {report.input_source}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("needs", justify="right")
    table.add_column("", justify="center")
    bounds = report.weight_rounding
    if bounds is not None:
        table.add_column(f"weights {report.precision}\nalone", justify="right")
    judged = {c.name: c for c in report.checks}
    rows: list[tuple[str, Any]] = []
    for name, metrics in report.outputs.items():
        for key, value in metrics.to_dict().items():
            if key not in ("elements",):
                rows.append((f"outputs.{name}.{key}", value))
    rows += [(f"task.{k}", v) for k, v in report.task_metrics.items()]
    for name, value in rows:
        check = judged.get(name)
        shown = "nan" if value is None else (f"{value:.6g}" if isinstance(value, float) else str(value))
        needs = f"{check.op} {check.threshold:g}" if check else ""
        mark = "" if check is None else ("[green]✓[/]" if check.passed else "[red]✗[/]")
        cells = [name, shown, needs, mark]
        if bounds is not None:
            bound = bounds.get(name.removeprefix("task.")) if name.startswith("task.") else None
            cells.append("" if bound is None else f"{bound:.6g}")
        table.add_row(*cells)
    for excused in report.excused:  # the tokens judged by the side they took: named, max_rel against that side
        for token in excused["tokens"]:
            cells = [f"excused, sample {excused['sample']}: {token.split(':')[0]}",
                     f"{excused['max_rel_taken_side']:.6g}", "ill-conditioned in float64", "~"]
            table.add_row(*cells, *([""] if bounds is not None else []))
    return table


def print_parity(console: Console, report: ParityReport | BundleReport) -> None:
    if isinstance(report, BundleReport):
        for one in report.graphs.values():
            print_parity(console, one)
        verdict = "[green]PASS[/]" if report.passed else "[red]FAIL[/]"
        console.print(f"{verdict} {report.bundle}: {len(report.graphs)} graph(s)")
        return
    console.print(parity_table(report))
    for note in report.notes:
        console.print(f"[yellow]note:[/] {note}")
    runner = report.runner
    console.print(f"runner: {runner.get('backend')} {runner.get('version', '')}".rstrip())
    if report.passed:
        console.print(f"[green]PASS[/] {report.artifact}")
    else:
        failed = "; ".join(c.describe() for c in report.failures)
        console.print(f"[red]FAIL[/] {report.artifact}: {failed}")


def profile_table(results: list[ProfileResult], title: str = "latency") -> Table:
    """One column per result (device or artifact), one row per figure: fits a terminal."""
    table = Table(title=title)
    table.add_column("")
    for r in results:
        sizes = ("\n" + ", ".join(f"{dim} {size}" for dim, size in r.dims.items())) if r.dims else ""
        table.add_column(f"{Path(r.artifact).name}{sizes}\n{r.device} · {r.runner.get('backend', r.target)}",
                         justify="right")
    rows: list[tuple[str, Callable[[ProfileResult], str]]] = [
        ("batch × input", lambda r: "x".join(str(d) for d in r.input_shape)),
        ("threads", lambda r: str(r.threads or r.runner.get("threads") or "default")),
        ("latency p50 ms", lambda r: f"{r.latency_ms.p50:.2f}"),
        ("latency p90 ms", lambda r: f"{r.latency_ms.p90:.2f}"),
        ("latency p99 ms", lambda r: f"{r.latency_ms.p99:.2f}"),
        ("mean ± std ms", lambda r: f"{r.latency_ms.mean:.2f} ± {r.latency_ms.std:.2f}"),
        ("min ms", lambda r: f"{r.latency_ms.min:.2f}"),
        ("throughput img/s", lambda r: f"{r.throughput_ips:.1f}"),
        ("load s", lambda r: f"{r.load_s:.2f}"),
        ("first inference ms", lambda r: f"{r.first_inference_ms:.1f}"),
        ("peak RSS MB", lambda r: f"{r.peak_rss_mb:.0f}"),
        ("spread", lambda r: "ok" if r.spread.trustworthy else "[red]unstable[/]: " + ", ".join(r.spread.reasons)),
    ]
    for label, cell in rows:
        table.add_row(label, *(cell(r) for r in results))
    return table


def layer_table(result: ProfileResult, top: int = 15) -> Table:
    table = Table(title=f"top {top} operators ({result.runner.get('backend')})")
    for column in ("node", "op", "ms / run", "share"):
        table.add_column(column, justify="left" if column in ("node", "op") else "right")
    for row in result.per_layer[:top]:
        table.add_row(row.name, row.op_type, f"{row.total_ms:.3f}", f"{100 * row.share:.1f}%")
    return table
