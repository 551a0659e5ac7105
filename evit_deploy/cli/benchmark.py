"""``evit benchmark``: every target x precision exported, verified, scored and timed, in one table;
``evit benchmark merge``: the shards of a benchmark as one."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from evit_deploy.cli._common import err, out, stage_progress
from evit_deploy.cli._errors import handle_errors
from evit_deploy.cli._requests import takes
from evit_deploy.requests import BenchmarkRequest

LOG_WIDTH = 240


class _RunUnlessMerge(TyperGroup):
    """``evit benchmark MODEL ...`` runs a benchmark, ``evit benchmark merge DIR...`` merges: anything that is
    not a subcommand's name goes to ``run`` (its --help included), so the common case needs no verb."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands:
            args = ["run", *args]
        return super().parse_args(ctx, args)


benchmark_app = typer.Typer(
    cls=_RunUnlessMerge,
    help="Export, verify, evaluate and profile a model for every target and precision: one table, JSON, CSV, "
         "Markdown, JUnit and plots to choose an artifact (`evit benchmark MODEL --help`). `evit benchmark merge` "
         "joins the results of shards.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _report(result: object, quiet: bool, written: Path) -> None:
    """The table (or one line), the notes, and exit 1 when a row failed."""
    from evit_deploy.benchmark.render import footnotes, rich_table, title
    from evit_deploy.benchmark.results import BenchmarkResult
    from evit_deploy.errors import CheckFailed

    assert isinstance(result, BenchmarkResult)
    if quiet:
        out.print(title(result), markup=False)
    else:
        # a log (CI, a file) gets the table at full width, not squeezed into 80 columns
        (out if out.is_terminal else Console(width=LOG_WIDTH)).print(rich_table(result))
        for line in footnotes(result):
            out.print(f"[yellow]note:[/] {line}", highlight=False)
    err.print(f"results: {written}", highlight=False)
    failed = result.failed
    if failed:
        raise CheckFailed(f"{len(failed)} of {len(result.rows)} row(s) failed: "
                          + "; ".join(f"{r.key} ({r.status})" for r in failed))


@benchmark_app.command("run")
@takes(BenchmarkRequest)
def benchmark(
    request: BenchmarkRequest,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the summary line.")] = False,
) -> None:
    """Benchmark MODEL over targets x precisions (x resolutions x devices): export (or reuse), verify against
    PyTorch, score on --data, profile. A failing row never stops the others.

    `evit benchmark merge DIR...` joins the results of --shard runs. Exit 0 every row ok or skipped, 1 a row
    failed (export, run, parity or --max-drop), 2 usage error.
    """
    from evit_deploy.benchmark import run_benchmark

    with handle_errors():
        with stage_progress(quiet) as progress:
            result = run_benchmark(request, progress=progress)
        _report(result, quiet, request.out)


@benchmark_app.command("merge")
def merge(
    folders: Annotated[list[Path], typer.Argument(metavar="DIR...", show_default=False,
                                                  help="The --out folders of the shards' runs.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the merged results.")] = Path("benchmark-merged"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the summary line.")] = False,
) -> None:
    """Merge the results of benchmark shards (same model and configuration) into one table, JSON, CSV,
    Markdown, JUnit and plots. Exit 1 when a merged row failed, 2 when the shards do not belong together."""
    from evit_deploy.benchmark import merge_results

    with handle_errors():
        result = merge_results(folders, out_dir)
        _report(result, quiet, out_dir)
