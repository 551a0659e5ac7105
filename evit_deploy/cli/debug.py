"""``evit debug``: where an artifact departs from PyTorch, layer by layer."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from evit_deploy.cli._common import out, stage_progress
from evit_deploy.cli._errors import handle_errors
from evit_deploy.debug.engine import THRESHOLDS


def debug(
    artifact: Annotated[Path, typer.Argument(help="An exported artifact (its .evit.json must be beside it).")],
    weights: Annotated[Path | None, typer.Option(help="Reference weights (default: those recorded at export).")] = None,
    images: Annotated[Path | None, typer.Option(help="Folder of images (or a .npy) instead of random inputs.")] = None,
    samples: Annotated[int | None, typer.Option(help="Inputs to compare (default 2).")] = None,
    layers: Annotated[str, typer.Option(
        help="auto: the model's own layers and blocks, one per computation; all: every mapped module, "
             "torch building blocks (BatchNorm, activations) included.")] = "auto",
    threshold: Annotated[float | None, typer.Option(
        help="Relative L2 error over which a layer counts as divergent (default per precision: "
             + ", ".join(f"{k} {v:g}" for k, v in THRESHOLDS.items()) + ").")] = None,
    alone: Annotated[bool, typer.Option(
        help="Also run each layer alone on the reference's inputs: the error it adds by itself.")] = True,
    seed: Annotated[int, typer.Option(help="Seed of the random inputs.")] = 0,
    threads: Annotated[int | None, typer.Option(help="Runtime threads.")] = None,
    top: Annotated[int, typer.Option(help="Rows of the table of layers adding the most error.")] = 10,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON ('-' for stdout).")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write error against depth as a PNG.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the verdict line.")] = False,
) -> None:
    """Compare every layer of ARTIFACT with its PyTorch module. Exit 0 none over the threshold,
    1 some layer over it, 2 usage error."""
    from evit_deploy.debug.engine import check_layers_mode, debug_artifact
    from evit_deploy.errors import CheckFailed, UsageError
    from evit_deploy.report import write_json

    with handle_errors():
        check_layers_mode(layers)
        to_stdout = json_path is not None and str(json_path) == "-"
        for path, what in ((json_path, "--json"), (plot, "--plot")):
            if path is not None and not to_stdout and not path.parent.is_dir():
                raise UsageError(f"{what} {path}: folder {path.parent} does not exist; create it or choose another")
        if plot is not None and plot.suffix.lower() != ".png":
            raise UsageError(f"--plot {plot}: give a .png file name")
        if top < 0:
            raise UsageError(f"--top must be 0 or more, got {top}")
        with stage_progress(quiet or to_stdout) as progress:
            report = debug_artifact(artifact, weights=weights, images=images, samples=samples, seed=seed,
                                    layers=layers, threshold=threshold, threads=threads, alone=alone,
                                    progress=progress)
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
