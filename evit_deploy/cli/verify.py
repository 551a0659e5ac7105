"""``evit verify``: prove an artifact computes what PyTorch computes."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from evit_deploy.cli._common import out, stage_progress
from evit_deploy.cli._errors import handle_errors
from evit_deploy.cli._requests import takes
from evit_deploy.requests import VerifyRequest


@takes(VerifyRequest)
def verify(
    request: VerifyRequest,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON ('-' for stdout).")] = None,
    junit: Annotated[Path | None, typer.Option(help="Write a JUnit XML report (one testcase per metric).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the verdict line.")] = False,
) -> None:
    """Compare ARTIFACT with its PyTorch reference. Exit 0 pass, 1 fail, 2 usage error, 3 toolchain failure."""
    from evit_deploy import api
    from evit_deploy.errors import CheckFailed
    from evit_deploy.parity import ParityReport
    from evit_deploy.report import print_parity, write_json, write_junit

    with handle_errors():
        to_stdout = json_path is not None and str(json_path) == "-"
        with stage_progress(quiet or to_stdout) as progress:
            report = api.verify(request, progress=progress)
        if to_stdout:
            print(json.dumps(report.to_dict(), indent=2))
        elif json_path is not None:
            write_json(json_path, report.to_dict())
        if junit is not None:
            write_junit(junit, report)
        if not to_stdout:
            if quiet:
                verdict = "PASS" if report.passed else "FAIL " + "; ".join(c.describe() for c in report.failures)
                out.print(f"{verdict} {request.artifact}", markup=False)
            else:
                print_parity(out, report)
                remote = report.runner.get("remote") if isinstance(report, ParityReport) else None
                if remote:
                    from evit_deploy.machine import state_summary

                    out.print(f"device: {remote['device']} ({remote['address']}) · "
                              f"{state_summary(remote.get('state', {}))}", markup=False)
        if not report.passed:
            failed = ", ".join(c.name for c in report.failures)
            raise CheckFailed(f"parity failed: {failed}")
