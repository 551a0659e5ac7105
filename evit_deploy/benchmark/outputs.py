"""The files a benchmark leaves: ``benchmark.json`` (the contract ``merge`` reads), ``.csv``, ``.md``,
JUnit XML (one testcase per row, for CI dashboards) and the two plots. Each is written beside its
destination and renamed into place, so an interrupted run never leaves a half-written file.
"""
from __future__ import annotations

import csv
import io
import os
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from evit_deploy.benchmark.plots import matplotlib_missing, write_plots
from evit_deploy.benchmark.render import baseline_cells, baselines_shown, footnotes, headers, row_cells, title
from evit_deploy.benchmark.results import CHECK_FAILED, OK, SKIPPED, BenchmarkResult, Row
from evit_deploy.errors import UsageError
from evit_deploy.manifest import write_json_atomic

JSON, CSV, MARKDOWN, JUNIT = "benchmark.json", "benchmark.csv", "benchmark.md", "benchmark.junit.xml"


def write_outputs(result: BenchmarkResult, out: Path) -> list[Path]:
    """Every output file in ``out`` (created if needed); the paths written. Plots need matplotlib: without
    it they are left out and the result's notes say so."""
    missing = matplotlib_missing()
    if missing is not None and missing not in result.notes:
        result.notes.append(missing)
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / JSON, result.to_dict())
        _write_text(out / CSV, csv_text(result))
        _write_text(out / MARKDOWN, markdown(result))
        _write_text(out / JUNIT, junit_xml(result))
    except OSError as err:
        raise UsageError(f"cannot write the results to {out}: {err.strerror or err}") from None
    return [out / name for name in (JSON, CSV, MARKDOWN, JUNIT)] + write_plots(result, out)


def _write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _flat(row: Row, task_keys: list[str]) -> dict[str, Any]:
    parity, metric, latency = row.parity or {}, row.metric, row.latency
    return {
        "key": row.key, "target": row.target, "precision": row.precision, "resolution": row.size,
        "device": row.device, "status": row.status, "stage": row.stage, "reason": row.reason,
        "artifact": row.artifact, "size_bytes": row.size_bytes, "export_s": row.export_s, "reused": row.reused,
        "parity_passed": parity.get("passed"), "parity_failed": ";".join(parity.get("failed", [])),
        "parity_max_rel": parity.get("max_rel"), "parity_cosine": parity.get("cosine"),
        **{f"parity_{k}": parity.get("task", {}).get(k) for k in task_keys},
        "metric_name": metric.name if metric else None, "metric": metric.artifact if metric else None,
        "metric_reference": metric.reference if metric else None, "drop": metric.drop if metric else None,
        "p50_ms": latency.p50_ms if latency else None, "p90_ms": latency.p90_ms if latency else None,
        "mean_ms": latency.mean_ms if latency else None, "std_ms": latency.std_ms if latency else None,
        "min_ms": latency.min_ms if latency else None,
        "throughput_ips": latency.throughput_ips if latency else None,
        "latency_trustworthy": latency.trustworthy if latency else None,
        "latency_spread": ";".join(latency.spread) if latency else None,
        "latency_runner": latency.runner if latency else None, "latency_note": row.latency_note,
        "speedup": row.speedup, "notes": " | ".join(row.notes),
    }


def csv_text(result: BenchmarkResult) -> str:
    """One line per row, every figure in its own column (empty where there is none)."""
    task_keys = sorted({k for row in result.rows for k in (row.parity or {}).get("task", {})})
    lines = [_flat(row, task_keys) for row in result.rows]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(_flat(Row("", "", [0, 0], ""), task_keys)))
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in line.items()} for line in lines)
    return buffer.getvalue()


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(result: BenchmarkResult) -> str:
    """The table as Markdown, with what it was measured on and the notes, ready for a README or a PR."""
    columns = headers(result)
    lines = [f"### {title(result)}", ""]
    weights = result.config.get("weights", {})
    weights_text = (f"sha256 {weights['sha256'][:12]}…" if weights.get("sha256")
                    else f"seeded random weights (seed {weights.get('seed')})")
    hosts = "; ".join(f"{h.get('cpu')} ({h.get('cores')} cores)" for h in result.hosts)
    lines += [f"Weights: {weights_text}. Measured on: {hosts}. Created {result.created}.", ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for baseline in baselines_shown(result):
        lines.append("| " + " | ".join(_md_cell(c) for c in baseline_cells(result, baseline)) + " |")
    for row in result.rows:
        lines.append("| " + " | ".join(_md_cell(c) for c in row_cells(result, row)) + " |")
    notes = footnotes(result)
    if notes:
        lines += ["", *[f"- {_md_cell(n)}" for n in notes]]
    return "\n".join(lines) + "\n"


def junit_xml(result: BenchmarkResult) -> str:
    """One testcase per row: failures for failed rows (export, run or check), skipped for skipped ones."""
    shard = "".join(f".shard{i}of{n}" for i, n in result.shards)
    name = f"evit.benchmark.{result.model}{shard}"
    failures = sum(r.status not in (OK, SKIPPED) for r in result.rows)
    suite = ET.Element("testsuite", name=name, tests=str(len(result.rows)), failures=str(failures), errors="0",
                       skipped=str(sum(r.status == SKIPPED for r in result.rows)), time=f"{result.seconds:.1f}")
    for row in result.rows:
        case = ET.SubElement(suite, "testcase", classname=name, name=row.key, time=f"{row.export_s or 0:.1f}")
        if row.status == SKIPPED:
            ET.SubElement(case, "skipped", message=row.reason or "")
        elif row.status != OK:
            kind = "CheckFailed" if row.status == CHECK_FAILED else "".join(w.title() for w in row.status.split())
            failure = ET.SubElement(case, "failure", message=f"{row.stage}: {row.reason}", type=kind)
            failure.text = "\n".join([f"{row.stage}: {row.reason}", *row.notes])
    suites = ET.Element("testsuites")
    suites.append(suite)
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"
