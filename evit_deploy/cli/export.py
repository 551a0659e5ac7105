"""``evit export``: a checkpoint becomes a deployable artifact with its manifest."""
from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from evit_deploy.cli._common import err, parse_target_options, stage_progress
from evit_deploy.cli._errors import handle_errors
from evit_deploy.cli._requests import takes
from evit_deploy.requests import ExportRequest


def _target_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    return parse_target_options(kwargs["ctx"].args)


@takes(ExportRequest, options=_target_options)
def export(
    ctx: typer.Context,
    request: ExportRequest,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the artifact path.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Export MODEL to a deployable artifact plus NAME.evit.json (how it was made).

    Flags a target adds (e.g. --opset, --simplify for onnx; --layout for tflite) go after
    the others and are validated by that target: `evit export --help` lists them.
    """
    from evit_deploy import api

    with handle_errors():
        with stage_progress(quiet or json_out) as progress:
            result = api.export(request, progress=progress)
        if json_out:
            print(json.dumps(result.manifest.model_dump(mode="json"), indent=2))
        else:
            if not quiet:
                for note in result.manifest.notes:
                    err.print(f"note: {note}")
                err.print(f"exported {result.manifest.model} -> {result.manifest.target} {result.manifest.precision} "
                          f"in {result.seconds:.1f} s; manifest {result.manifest_path}")
            print(result.artifact)
