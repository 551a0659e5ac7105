"""``evit debug``: where an artifact departs from PyTorch, layer by layer."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from evit_deploy.cli._common import out, stage_progress
from evit_deploy.cli._errors import handle_errors
from evit_deploy.cli._requests import takes
from evit_deploy.requests import DebugRequest


@takes(DebugRequest)
def debug(
    request: DebugRequest,
    top: Annotated[int, typer.Option(help="Rows of the table of layers adding the most error.")] = 10,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON ('-' for stdout).")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write error against depth as a PNG.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the verdict line.")] = False,
) -> None:
    """Compare every layer of ARTIFACT with its PyTorch module. Exit 0 none over the threshold,
    1 some layer over it, 2 usage error, 3 toolchain failure."""
    from evit_deploy.debug.engine import debug_artifact
    from evit_deploy.errors import CheckFailed, UsageError
    from evit_deploy.report import write_json

    with handle_errors():
        to_stdout = json_path is not None and str(json_path) == "-"
        for path, what in ((json_path, "--json"), (plot, "--plot")):
            if path is not None and not to_stdout and not path.parent.is_dir():
                raise UsageError(f"{what} {path}: folder {path.parent} does not exist; create it or choose another")
        if plot is not None and plot.suffix.lower() != ".png":
            raise UsageError(f"--plot {plot}: give a .png file name")
        if top < 0:
            raise UsageError(f"--top must be 0 or more, got {top}")
        with stage_progress(quiet or to_stdout) as progress:
            report = debug_artifact(request, progress=progress)
        if plot is not None:
            from evit_deploy.debug.plot import plot_report

            plot_report(report, plot)
        if to_stdout:
            print(json.dumps(report.to_dict(), indent=2))
        elif json_path is not None:
            write_json(json_path, report.to_dict())
        if not to_stdout:
            from evit_deploy.debug.render import print_debug

            print_debug(out, report, top=top, quiet=quiet)
        first = report.first_divergent
        if first is not None:
            raise CheckFailed(f"{len(report.over_threshold)} layer(s) over the threshold {report.threshold:g}; "
                              f"the first is {first.module or '(model)'} (relative L2 {first.errors.rel_l2:.3g})")
