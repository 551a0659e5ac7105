"""``evit verify``: prove an artifact computes what PyTorch computes."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from evit_deploy.cli._common import out, stage_progress
from evit_deploy.cli._errors import handle_errors


def verify(
    artifact: Annotated[Path, typer.Argument(help="An exported artifact (its .evit.json must be beside it).")],
    weights: Annotated[Path | None, typer.Option(help="Reference weights (default: those recorded at export).")] = None,
    images: Annotated[Path | None, typer.Option(help="Folder of images (or a .npy) instead of random inputs.")] = None,
    samples: Annotated[int | None, typer.Option(help="Inputs to compare (default 4, or every image).")] = None,
    atol: Annotated[float | None, typer.Option(help="Absolute tolerance per element (with --rtol).")] = None,
    rtol: Annotated[float | None, typer.Option(help="Relative tolerance per element (with --atol).")] = None,
    max_rel: Annotated[float | None, typer.Option(help="Override the recipe's max relative error.")] = None,
    resolution: Annotated[str | None, typer.Option(help="HxW to verify a dynamic artifact at.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random inputs.")] = 0,
    device: Annotated[str, typer.Option(
        help="Where the artifact runs: cpu or cuda here, or an inventory device NAME[:RUNTIME] over SSH "
             "(inputs and the PyTorch reference stay here).")] = "cpu",
    inventory: Annotated[Path | None, typer.Option(
        help="devices.yaml (default: $EVIT_DEVICES, else ~/.config/evit/devices.yaml).")] = None,
    threads: Annotated[int | None, typer.Option(help="Runtime threads.")] = None,
    weight_rounding: Annotated[bool, typer.Option(
        help="For fp16/int8: also score the reference with only its weights rounded to that precision, "
             "which tells a shortfall of the precision from one of the export.")] = True,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON ('-' for stdout).")] = None,
    junit: Annotated[Path | None, typer.Option(help="Write a JUnit XML report (one testcase per metric).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the verdict line.")] = False,
) -> None:
    """Compare ARTIFACT with its PyTorch reference. Exit 0 pass, 1 fail, 2 usage error."""
    from evit_deploy import api
    from evit_deploy.configs import parse_resolution
    from evit_deploy.errors import CheckFailed
    from evit_deploy.report import print_parity, write_json, write_junit

    with handle_errors():
        to_stdout = json_path is not None and str(json_path) == "-"
        with stage_progress(quiet or to_stdout) as progress:
            report = api.verify(artifact, weights=weights, images=images, samples=samples, seed=seed, atol=atol,
                                rtol=rtol, tolerances={"max_rel": max_rel},
                                resolution=parse_resolution(resolution) if resolution else None,
                                device=device, threads=threads, progress=progress, inventory=inventory,
                                weight_rounding=weight_rounding)
        if to_stdout:
            print(json.dumps(report.to_dict(), indent=2))
        elif json_path is not None:
            write_json(json_path, report.to_dict())
        if junit is not None:
            write_junit(junit, report)
        if not to_stdout:
            if quiet:
                verdict = "PASS" if report.passed else "FAIL " + "; ".join(c.describe() for c in report.failures)
                out.print(f"{verdict} {artifact}", markup=False)
            else:
                print_parity(out, report)
                remote = report.runner.get("remote")
                if remote:
                    from evit_deploy.remote.state import state_summary

                    out.print(f"device: {remote['device']} ({remote['address']}) · "
                              f"{state_summary(remote.get('state', {}))}", markup=False)
        if not report.passed:
            failed = ", ".join(c.name for c in report.failures)
            raise CheckFailed(f"parity failed: {failed}")
