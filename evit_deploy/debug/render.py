"""``evit debug``'s report as rich tables: the verdict, the first divergent layer, the worst adders."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from evit_deploy.debug.report import DebugReport, LayerResult


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def layer_table(report: DebugReport, rows: list[LayerResult], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("module", overflow="fold", min_width=24)  # the path is the answer: never cut it
    for name in ("class", "rel L2", "added alone", "cosine", "max abs", "non-finite"):
        table.add_column(name, justify="left" if name == "class" else "right", no_wrap=True)
    for layer in rows:
        over = layer.errors.over(report.threshold)
        style = "red" if over else None
        added = _fmt(layer.added) if layer.added is not None else f"- ({layer.alone_note})" if layer.alone_note else "-"
        table.add_row(str(report.layers.index(layer)), layer.module or "(model)", layer.cls,
                      _fmt(layer.errors.rel_l2), added, f"{layer.errors.cosine:.6f}", _fmt(layer.errors.max_abs),
                      f"{layer.errors.nonfinite_share:.2%}" if layer.errors.nonfinite else "0", style=style)
    return table


def print_debug(console: Console, report: DebugReport, *, top: int = 10, quiet: bool = False) -> None:
    first = report.first_divergent
    name = Path(report.artifact).name
    if first is None:
        verdict = f"OK {name}: no layer over the threshold {report.threshold:g} ({len(report.layers)} compared)"
    else:
        verdict = (f"DIVERGES {name}: first layer over the threshold {report.threshold:g} is "
                   f"{first.module or '(model)'} (relative L2 {first.errors.rel_l2:.3g}, "
                   f"{len(report.over_threshold)} layer(s) over)")
    if quiet:
        console.print(verdict, markup=False, highlight=False)
        return
    console.print(f"{report.model} · {name} · {report.target} {report.precision} · {report.samples} sample(s), "
                  f"{report.input_source} · {len(report.layers)} layer(s) ({report.layers_mode})", markup=False)
    if first is not None:
        index = report.layers.index(first)
        context = report.layers[max(0, index - 2): index + 3]
        console.print(layer_table(report, context, "around the first divergent layer"))
    ranked = report.top_added(top)
    if ranked:
        console.print(layer_table(report, ranked, f"layers adding the most error by themselves (top {len(ranked)})"))
    console.print(f"final output: relative L2 {report.output.rel_l2:.3g} instrumented, "
                  f"{report.deployed_output.rel_l2:.3g} as deployed", markup=False, highlight=False)
    unable = sorted({layer.alone_note for layer in report.layers if layer.alone_note})
    for note in unable[:3]:
        console.print(f"[dim]not run alone: {note}[/]")
    for note in report.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    console.print(verdict, markup=False, highlight=False)
