"""``evit eval``: the task metric of an artifact and of its PyTorch reference on the user's labelled data."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from evit_deploy.cli._common import check_output_path, iteration_progress, out
from evit_deploy.cli._errors import handle_errors
from evit_deploy.cli._requests import takes
from evit_deploy.requests import EvalRequest


@takes(EvalRequest)
def eval_command(
    request: EvalRequest,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the result as JSON ('-' for stdout).")] = None,
    confusion: Annotated[Path | None, typer.Option(help="Write the confusion matrix as a PNG.")] = None,
    per_class: Annotated[bool, typer.Option("--per-class", help="Show the per-class IoU / accuracy table.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the headline line.")] = False,
) -> None:
    """Score ARTIFACT and its PyTorch reference on labelled data (mIoU / top-1, the official protocol).

    Exit 0 ok, 1 the drop exceeds --max-drop, 2 usage or data error.
    """
    from evit_deploy.errors import CheckFailed
    from evit_deploy.evaluation import evaluate
    from evit_deploy.evaluation.render import print_eval
    from evit_deploy.labelled.scoring import METRIC_NAMES
    from evit_deploy.report import write_json

    with handle_errors():
        check_output_path(json_path, "--json")
        check_output_path(confusion, "--confusion", ".png")
        to_stdout = json_path is not None and str(json_path) == "-"
        with iteration_progress(quiet or to_stdout, "evaluating") as tick:
            result = evaluate(request, on_image=tick)
        if to_stdout:
            print(json.dumps(result.to_dict(), indent=2))
        elif json_path is not None:
            write_json(json_path, result.to_dict())
        if confusion is not None:
            from evit_deploy.evaluation.plots import write_confusion_png

            write_confusion_png(result, confusion)
        if quiet and not to_stdout:
            name = METRIC_NAMES[result.headline]
            scores = result.artifact or result.reference
            assert scores is not None
            value = scores.metrics[result.headline]
            drop = "" if result.drop is None else f" (drop {result.drop:+.2f})"
            out.print(f"{name} {'-' if value is None else f'{value:.2f}'}{drop} {request.source}", markup=False)
        elif not to_stdout:
            print_eval(out, result, per_class=per_class)
        failure = result.drop_failure(request.max_drop) if request.max_drop is not None else None
        if failure is not None:
            raise CheckFailed(failure)
