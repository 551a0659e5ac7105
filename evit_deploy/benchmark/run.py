"""``run_benchmark``: every cell of the matrix exported (or reused), verified, scored and timed.

A cell's failure is the cell's: an ``EvitError`` from any stage (a bad recipe, a converter crash, a
runtime that will not load, a device that cannot be reached) is recorded in its row and the matrix
goes on. Anything else is a bug in evit and stops the run loudly. Every option is checked before
anything is written.
"""
from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from evit_deploy import api, zoo
from evit_deploy.benchmark.artifacts import Built, build
from evit_deploy.benchmark.config import configuration
from evit_deploy.benchmark.matrix import Cell, plan_matrix
from evit_deploy.benchmark.outputs import write_outputs
from evit_deploy.benchmark.results import (
    CHECK_FAILED,
    EXPORT_FAILED,
    RUN_FAILED,
    SKIPPED,
    Baseline,
    BenchmarkResult,
    Latency,
    Metric,
    Row,
)
from evit_deploy.data import list_images
from evit_deploy.devices import is_local, load_inventory
from evit_deploy.errors import EvitError, UsageError
from evit_deploy.evaluation import evaluate
from evit_deploy.labelled.datasets import open_dataset
from evit_deploy.labelled.scoring import HEADLINE, METRIC_NAMES
from evit_deploy.manifest import sha256_path
from evit_deploy.parity import ParityReport
from evit_deploy.profiling import ProfileResult, host_info
from evit_deploy.requests import BenchmarkRequest, EvalRequest, ExportRequest, ProfileRequest, VerifyRequest
from evit_deploy.targets.base import get_target

Progress = Callable[[str], None]
ARTIFACTS = "artifacts"
DEFAULT_CALIB_SAMPLES = 64


def _quiet(message: str) -> None:
    return None


@dataclass
class _Run:
    """What every cell of one run shares: the checked request, and what is measured once per resolution."""

    request: BenchmarkRequest
    card: Any
    cells: list[Cell]
    unsupported: list[str]  # target/precision pairs asked for that the target does not have
    calib_samples: int | None
    weights_sha256: str | None
    progress: Progress
    baselines: dict[tuple[int, int], Baseline] = field(default_factory=dict)

    @property
    def artifacts(self) -> Path:
        return self.request.out / ARTIFACTS


def run_benchmark(model: str | BenchmarkRequest, *, progress: Progress = _quiet, **options: Any) -> BenchmarkResult:
    """Benchmark ``model`` (a zoo name) over the matrix the options describe (``BenchmarkRequest``'s fields);
    the results are written to ``out`` (JSON, CSV, Markdown, JUnit XML, plots) and returned."""
    request = model if isinstance(model, BenchmarkRequest) else BenchmarkRequest.parse(model=model, **options)
    started = time.perf_counter()
    run = _prepare(request, progress)
    rows = []
    with warnings.catch_warnings():  # said once, in the result's notes, not once per export
        warnings.simplefilter("ignore", zoo.RandomWeightsWarning)
        for number, cell in enumerate(run.cells, start=1):
            tell: Progress = lambda message, n=number, c=cell: progress(f"[{n}/{len(run.cells)}] {c.key}: {message}")
            rows.append(_run_cell(cell, run, tell))
    result = BenchmarkResult(
        model=run.card.name, task=run.card.task,
        metric_name=METRIC_NAMES[HEADLINE[run.card.task]] if request.data is not None else None,
        config=configuration(request, run.card.name, run.calib_samples, run.weights_sha256), rows=rows,
        baselines=list(run.baselines.values()), shards=[list(request.shard)] if request.shard else [],
        hosts=[host_info()], notes=_notes(run),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), seconds=time.perf_counter() - started)
    write_outputs(result, request.out)
    return result


def _prepare(request: BenchmarkRequest, progress: Progress) -> _Run:
    """Check everything the run will use, in the order a user would fix it; nothing is written here."""
    card = zoo.get_card(request.model)
    if card.graphs:
        raise UsageError(f"{card.name} deploys as several graphs; benchmark its graphs with export/verify/profile")
    matrix = plan_matrix(request, tuple(card.input_size))
    cells = matrix.shard(*request.shard) if request.shard else matrix.cells
    remote = sorted({c.device.partition(":")[0] for c in matrix.cells if not is_local(c.device)})
    if remote:
        inventory = load_inventory(request.inventory)
        for name in remote:
            inventory.get(name)
    if request.data is not None:
        open_dataset(request.data, format=request.format, card=card, limit=request.limit,
                     classes_file=request.classes)
    calib_samples = None
    if request.calib is not None:
        found = len(list_images(request.calib))
        calib_samples = request.calib_samples or min(found, DEFAULT_CALIB_SAMPLES)
        if calib_samples > found:
            raise UsageError(f"--calib-samples {calib_samples}, but {request.calib} holds {found} image(s)")
    if request.images is not None:
        list_images(request.images)
    _check_writable(request.out)
    weights = sha256_path(request.weights) if request.weights is not None else None
    progress(f"{len(cells)} of {len(matrix.cells)} row(s)" + (f" (shard {request.shard[0]}/{request.shard[1]})"
                                                              if request.shard else ""))
    return _Run(request, card, cells, matrix.unsupported, calib_samples, weights, progress)


def _check_writable(out: Path) -> None:
    existing = next(p for p in (out, *out.parents) if p.exists())
    if existing == out and not out.is_dir():
        raise UsageError(f"--out {out}: a file, not a folder; choose a folder for the artifacts and results")
    if not os.access(existing, os.W_OK):
        raise UsageError(f"--out {out}: {existing} is not writable; choose a writable folder")


def _notes(run: _Run) -> list[str]:
    request = run.request
    notes = [f"{combo}: not a precision that target supports, left out" for combo in run.unsupported]
    if request.weights is None:
        notes.append(f"no --weights: seeded random weights (seed {request.seed}); accuracy and parity figures say "
                     "nothing about the trained model")
    return notes


def _run_cell(cell: Cell, run: _Run, progress: Progress) -> Row:
    row = Row.of(cell)
    skip = _skip_reason(cell, run)
    if skip is not None:
        row.status, row.reason = SKIPPED, skip
        return row
    progress("exporting")
    try:
        built = build(_export_request(cell, run), weights_sha256=run.weights_sha256, force=run.request.force,
                      progress=progress)
    except EvitError as err:
        row.fail(EXPORT_FAILED, "export", str(err))
        return row
    row.artifact = str(built.artifact.relative_to(run.request.out))
    row.size_bytes = sum(f.bytes for f in built.manifest.files)
    row.export_s, row.reused = round(built.export_s, 2), built.reused
    row.notes += [n for n in (built.note,) if n]
    _stage(row, "verify", lambda: _verify(row, built, cell, run, progress))
    if run.request.data is not None:
        _stage(row, "eval", lambda: _evaluate(row, built, cell, run, progress))
    _stage(row, "profile", lambda: _profile(row, built, cell, run, progress))
    return row


def _stage(row: Row, name: str, work: Callable[[], None]) -> None:
    try:
        work()
    except EvitError as err:
        row.fail(RUN_FAILED, name, str(err))


def _skip_reason(cell: Cell, run: _Run) -> str | None:
    """Why this machine cannot run the cell at all (the row is kept, marked skipped)."""
    target = get_target(cell.target)
    reason = target.available()
    if reason is not None:
        return f"{cell.target} cannot export here: {reason}"
    if cell.precision == "int8" and run.request.calib is None:
        return "int8 calibrates on images: give --calib with a folder of them"
    if is_local(cell.device):
        reason = target.runtime_available(cell.device)
        if reason is not None:
            return f"{cell.target} cannot run on {cell.device} here: {reason}"
    return None


def _export_request(cell: Cell, run: _Run) -> ExportRequest:
    request = run.request
    name = f"{run.card.name}-{cell.target}-{cell.precision}-{cell.size}"
    return ExportRequest.parse(model=run.card.name, target=cell.target, precision=cell.precision,
                               resolution=cell.resolution, weights=request.weights, seed=request.seed,
                               calib=request.calib, calib_samples=run.calib_samples, out=run.artifacts, name=name,
                               options=get_target(cell.target).options_for_here())


def _verify(row: Row, built: Built, cell: Cell, run: _Run, progress: Progress) -> None:
    request = run.request
    report = api.verify(VerifyRequest.parse(artifact=built.artifact, images=request.images, samples=request.samples,
                                            seed=request.seed, device=cell.device, inventory=request.inventory,
                                            threads=request.threads), progress=progress)
    assert isinstance(report, ParityReport)  # one graph: _prepare refuses several-graph models
    row.parity = _parity_summary(report)
    if not report.passed:
        row.fail(CHECK_FAILED, "verify", "parity failed: " + "; ".join(c.describe() for c in report.failures))


def _parity_summary(report: ParityReport) -> dict[str, Any]:
    worst = {"max_rel": max((m.max_rel for m in report.outputs.values()), default=None),
             "cosine": min((m.cosine for m in report.outputs.values()), default=None),
             "nonfinite": sum(m.nonfinite for m in report.outputs.values())}
    return {"passed": report.passed, "failed": [c.name for c in report.failures], "samples": report.samples,
            "inputs": report.input_source, "runner": report.runner.get("backend"), "task": dict(report.task_metrics),
            **worst}


def _evaluate(row: Row, built: Built, cell: Cell, run: _Run, progress: Progress) -> None:
    request = run.request
    baseline = _baseline(cell, run)
    known = baseline.metric
    progress("evaluating")
    result = evaluate(EvalRequest.parse(source=str(built.artifact), data=request.data, format=request.format,
                                        limit=request.limit, classes=request.classes, device=cell.device,
                                        inventory=request.inventory, threads=request.threads,
                                        reference=known is None), progress=progress)
    assert result.artifact is not None
    value = result.artifact.metrics.get(result.headline)
    if result.reference is not None:
        known = baseline.metric = result.reference.metrics.get(result.headline)
    drop = None if value is None or known is None else known - value
    name = METRIC_NAMES[result.headline]
    row.metric = Metric(name, value, known, drop, result.images)
    row.notes += [n for n in result.notes if "protocol differs" not in n]
    if request.max_drop is not None and drop is not None and drop > request.max_drop:
        row.fail(CHECK_FAILED, "eval", f"{name} dropped {drop:.2f} points (PyTorch {known:.2f} -> {value:.2f}), "
                                       f"more than --max-drop {request.max_drop:g}")


def _profile(row: Row, built: Built, cell: Cell, run: _Run, progress: Progress) -> None:
    request = run.request
    if is_local(cell.device):
        note = get_target(cell.target).native_timing(cell.device)
        if note is not None:
            row.latency_note = note
            return
    progress("profiling")
    result = api.profile(ProfileRequest.parse(artifact=str(built.artifact), device=cell.device,
                                              inventory=request.inventory, threads=request.threads,
                                              warmup=request.warmup, iters=request.iters, seed=request.seed))
    assert isinstance(result, ProfileResult)
    row.latency = latency_of(result)
    if not row.latency.trustworthy:
        row.notes.append(f"latency {result.spread.summary()}")
    eager = _baseline(cell, run)
    if cell.device == eager.device and eager.latency is None and eager.reason is None:
        _time_eager(eager, cell, run)
    if cell.device == eager.device and eager.latency is not None:
        row.speedup = round(eager.latency.p50_ms / row.latency.p50_ms, 3)


def _baseline(cell: Cell, run: _Run) -> Baseline:
    """PyTorch eager at the cell's resolution on this machine (made on first use)."""
    if cell.resolution not in run.baselines:
        run.baselines[cell.resolution] = Baseline(list(cell.resolution), "cpu", host=host_info()["cpu"])
    return run.baselines[cell.resolution]


def _time_eager(baseline: Baseline, cell: Cell, run: _Run) -> None:
    """One eager profile per resolution: the denominator of every speed-up measured at it."""
    request = run.request
    run.progress(f"PyTorch eager {cell.size}: profiling")
    try:
        result = api.profile(ProfileRequest.parse(artifact=run.card.name, target="torch", weights=request.weights,
                                                  resolution=cell.resolution, threads=request.threads,
                                                  warmup=request.warmup, iters=request.iters, seed=request.seed))
    except EvitError as err:
        baseline.reason = str(err)
        return
    assert isinstance(result, ProfileResult)
    baseline.latency = latency_of(result)


def latency_of(result: ProfileResult) -> Latency:
    stats, spread = result.latency_ms, result.spread
    runner = " ".join(str(v) for v in (result.runner.get("backend"), result.runner.get("version")) if v)
    return Latency(round(stats.p50, 3), round(stats.p90, 3), round(stats.mean, 3), round(stats.std, 3),
                   round(stats.min, 3), round(result.throughput_ips, 2), spread.trustworthy, list(spread.reasons),
                   runner or result.target)
