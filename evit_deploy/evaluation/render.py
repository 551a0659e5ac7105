"""``EvalResult`` as rich tables: the metrics side by side, and the per-class figures on request."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from evit_deploy.evaluation.evaluate import EvalResult
from evit_deploy.labelled.scoring import METRIC_NAMES


def _cell(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _title(result: EvalResult) -> str:
    what = (f"{Path(result.source).name} ({result.target} {result.precision})" if result.target != "torch"
            else "PyTorch")
    return f"{result.model} · {what} · {result.format}: {result.images} image(s)"


def metrics_table(result: EvalResult) -> Table:
    """One row per metric (%): PyTorch, the artifact, and the difference (artifact - PyTorch)."""
    table = Table(title=_title(result))
    table.add_column("metric %")
    columns = [(name, scores) for name, scores in (("PyTorch", result.reference), ("artifact", result.artifact))
               if scores is not None]
    for name, _ in columns:
        table.add_column(name, justify="right")
    difference = result.difference()
    if difference:
        table.add_column("Δ artifact − PyTorch", justify="right")
    for key in columns[0][1].metrics:
        cells = [_cell(scores.metrics.get(key)) for _, scores in columns]
        if difference:
            cells.append(_cell(difference.get(key), signed=True))
        table.add_row(METRIC_NAMES.get(key, key), *cells)
    return table


def per_class_table(result: EvalResult) -> Table:
    """IoU (segmentation) or accuracy (classification) per class that occurs in the labels or predictions."""
    metric = "IoU %" if result.task == "segmentation" else "accuracy %"
    unit = "pixels" if result.task == "segmentation" else "images"
    table = Table(title=f"per class · {metric}")
    table.add_column("class")
    table.add_column(f"labelled {unit}", justify="right")
    runs = [(name, scores) for name, scores in (("PyTorch", result.reference), ("artifact", result.artifact))
            if scores is not None]
    for name, _ in runs:
        table.add_column(name, justify="right")
    both = len(runs) == 2
    if both:
        table.add_column("Δ", justify="right")
    first = runs[0][1]
    for index, name in enumerate(result.classes):
        values = [scores.per_class[index] for _, scores in runs]
        if all(v is None for v in values) and first.support[index] == 0:
            continue
        cells = [name, str(first.support[index]), *(_cell(v) for v in values)]
        if both:
            a, r = values[1], values[0]
            cells.append(_cell(None if a is None or r is None else a - r, signed=True))
        table.add_row(*cells)
    return table


def print_eval(console: Console, result: EvalResult, *, per_class: bool = False) -> None:
    console.print(metrics_table(result))
    if per_class:
        console.print(per_class_table(result))
    if result.published is not None:
        console.print(f"published ({result.model}, full validation set, paper's protocol): "
                      f"{METRIC_NAMES[result.headline]} {result.published:.2f}", markup=False)
    for scores, who in ((result.reference, "PyTorch"), (result.artifact, "artifact")):
        if scores is not None and scores.absent:
            console.print(f"[yellow]note:[/] {who}: {len(scores.absent)} class(es) occur in neither the labels nor "
                          "the predictions; their IoU is undefined and left out of the mean (the official script "
                          "would print nan)")
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    if result.runner:
        console.print(f"runner: {result.runner.get('backend')} {result.runner.get('version', '')}".rstrip(),
                      markup=False)
