"""``merge``: the results of several shards (one folder each) as one benchmark.

Shards are refused when they do not belong together: another model, another configuration (weights,
data, settings; see ``config``), a row present twice, or a slice of an ``I/N`` split missing. Each row
keeps the speed-up measured on its own machine.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from evit_deploy.benchmark.config import differences
from evit_deploy.benchmark.outputs import JSON, write_outputs
from evit_deploy.benchmark.results import SCHEMA, BenchmarkResult, Row
from evit_deploy.errors import UsageError


def load_result(folder: Path) -> BenchmarkResult:
    """The ``benchmark.json`` of one run's ``--out`` folder (or the file itself)."""
    path = folder / JSON if folder.is_dir() else folder
    if not path.is_file():
        raise UsageError(f"{folder}: no {JSON} there; give the --out folders of `evit benchmark` runs")
    try:
        data = json.loads(path.read_text())
        if data.get("schema") != SCHEMA:
            raise ValueError(f"schema {data.get('schema')!r}, this evit reads {SCHEMA}")
        return BenchmarkResult.from_dict(data)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise UsageError(f"{path}: not a benchmark result evit can read ({str(err).splitlines()[0]})") from None


def merge_results(folders: list[Path], out: Path) -> BenchmarkResult:
    """One result from the shards in ``folders``, written (JSON, CSV, Markdown, JUnit, plots) to ``out``."""
    if not folders:
        raise UsageError("merge needs the result folders of the shards: evit benchmark merge DIR [DIR...]")
    if any(out.resolve() == f.resolve() for f in folders):
        raise UsageError(f"--out {out} is one of the folders being merged; write the merge elsewhere")
    results = [load_result(f) for f in folders]
    first = results[0]
    for folder, other in zip(folders[1:], results[1:]):
        if other.model != first.model:
            raise UsageError(f"cannot merge {folder} with {folders[0]}: they benchmark different models "
                             f"({other.model} vs {first.model})")
        found = differences(first.config, other.config)
        if found:
            raise UsageError(f"cannot merge {folder} with {folders[0]}: different configurations: {'; '.join(found)}")
    rows: dict[str, tuple[Row, Path]] = {}
    for folder, result in zip(folders, results):
        for row in result.rows:
            if row.key in rows:
                raise UsageError(f"row {row.key} is in both {rows[row.key][1]} and {folder}: the same shard twice, "
                                 "or shards that overlap")
            rows[row.key] = (row, folder)
    shards = sorted({(i, n) for result in results for i, n in result.shards})
    _check_complete(shards)
    merged = BenchmarkResult(
        model=first.model, task=first.task, metric_name=first.metric_name, config=first.config,
        rows=sorted((row for row, _ in rows.values()), key=Row.sort_key),
        baselines=[b for result in results for b in result.baselines], shards=[list(s) for s in shards],
        hosts=list({json.dumps(h, sort_keys=True): h for r in results for h in r.hosts}.values()),
        notes=list(dict.fromkeys(n for r in results for n in r.notes)),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), seconds=sum(r.seconds for r in results))
    write_outputs(merged, out)
    return merged


def _check_complete(shards: list[tuple[int, int]]) -> None:
    for count in sorted({n for _, n in shards}):
        missing = sorted(set(range(1, count + 1)) - {i for i, n in shards if n == count})
        if missing:
            names = ", ".join(f"{i}/{count}" for i in missing)
            raise UsageError(f"shard(s) {names} missing: merge every shard of the run (rerun the missing one)")
