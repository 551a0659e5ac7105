"""``evit eval``: the task metric of an artifact and of its PyTorch reference on the user's labelled data."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from evit_deploy.cli._common import iteration_progress, out
from evit_deploy.cli._errors import handle_errors


def _check_output(path: Path | None, option: str, suffix: str | None = None) -> None:
    """Refuse an output path that cannot be written before any inference runs."""
    from evit_deploy.errors import UsageError

    if path is None or str(path) == "-":
        return
    if suffix is not None and path.suffix.lower() != suffix:
        raise UsageError(f"{option} {path}: give a {suffix} file name")
    if not path.parent.is_dir():
        raise UsageError(f"{option} {path}: folder {path.parent} does not exist")


def eval_command(
    source: Annotated[str, typer.Argument(
        metavar="ARTIFACT|MODEL",
        help="An exported artifact (its .evit.json beside it), or a zoo model name (PyTorch alone).")],
    data: Annotated[Path, typer.Option(help="The labelled dataset folder.")],
    format: Annotated[str | None, typer.Option(
        "--format", help="cityscapes, ade20k, masks or imagefolder (default: detected from the folder).")] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate the first N images only.")] = None,
    classes: Annotated[Path | None, typer.Option(
        help="masks: the classes YAML (default DATA/classes.yaml); imagefolder: an index file mapping folder "
             "names to class indices.")] = None,
    weights: Annotated[Path | None, typer.Option(
        help="PyTorch weights (default for an artifact: those recorded at export).")] = None,
    resolution: Annotated[str | None, typer.Option(
        help="HxW input for a zoo model instead of the card's protocol (said in the output).")] = None,
    device: Annotated[str, typer.Option(
        help="Where the artifact runs: cpu or cuda here, or an inventory device NAME[:RUNTIME] over SSH "
             "(the PyTorch reference runs here).")] = "cpu",
    inventory: Annotated[Path | None, typer.Option(
        help="devices.yaml (default: $EVIT_DEVICES, else ~/.config/evit/devices.yaml).")] = None,
    threads: Annotated[int | None, typer.Option(help="Runtime threads.")] = None,
    reference: Annotated[bool, typer.Option(help="Also score the PyTorch reference (an artifact only).")] = True,
    max_drop: Annotated[float | None, typer.Option(
        help="Fail (exit 1) when the artifact loses more than this many points of mIoU / top-1 against "
             "PyTorch.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the result as JSON ('-' for stdout).")] = None,
    confusion: Annotated[Path | None, typer.Option(help="Write the confusion matrix as a PNG.")] = None,
    per_class: Annotated[bool, typer.Option("--per-class", help="Show the per-class IoU / accuracy table.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the headline line.")] = False,
) -> None:
    """Score ARTIFACT and its PyTorch reference on labelled data (mIoU / top-1, the official protocol).

    Exit 0 ok, 1 the drop exceeds --max-drop, 2 usage or data error.
    """
    from evit_deploy.configs import parse_resolution
    from evit_deploy.errors import CheckFailed, UsageError
    from evit_deploy.evaluation import evaluate
    from evit_deploy.evaluation.evaluate import METRIC_NAMES
    from evit_deploy.evaluation.render import print_eval
    from evit_deploy.report import write_json

    with handle_errors():
        if max_drop is not None and max_drop < 0:
            raise UsageError(f"--max-drop must be at least 0 (points of mIoU / top-1), got {max_drop:g}")
        if max_drop is not None and (not reference or not Path(source).exists()):
            raise UsageError("--max-drop compares an artifact with its PyTorch reference: give an artifact, "
                             "without --no-reference")
        if threads is not None and threads < 1:
            raise UsageError(f"--threads must be at least 1, got {threads}")
        _check_output(json_path, "--json")
        _check_output(confusion, "--confusion", ".png")
        size = parse_resolution(resolution) if resolution else None
        to_stdout = json_path is not None and str(json_path) == "-"
        with iteration_progress(quiet or to_stdout, "evaluating") as tick:
            result = evaluate(source, data, format=format, limit=limit, weights=weights, classes=classes,
                              device=device, threads=threads, inventory=inventory, resolution=size,
                              reference=reference, on_image=tick)
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
            out.print(f"{name} {'-' if value is None else f'{value:.2f}'}{drop} {source}", markup=False)
        elif not to_stdout:
            print_eval(out, result, per_class=per_class)
        failure = result.drop_failure(max_drop) if max_drop is not None else None
        if failure is not None:
            raise CheckFailed(failure)
