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
        if json_out and result.bundle is not None:
            print(json.dumps({"bundle": result.bundle.model_dump(mode="json"),
                              "graphs": {name: r.manifest.model_dump(mode="json") for name, r in result.graphs.items()}},
                             indent=2))
        elif json_out:
            print(json.dumps(result.manifest.model_dump(mode="json"), indent=2))
        else:
            if not quiet:
                for graph in result.graphs.values() or [result]:
                    for note in graph.manifest.notes:
                        err.print(f"note: {note}")
                    label = graph.manifest.model + (f" {graph.manifest.graph}" if graph.manifest.graph else "")
                    err.print(f"exported {label} -> {graph.manifest.target} {graph.manifest.precision} "
                              f"in {graph.seconds:.1f} s; manifest {graph.manifest_path}")
                if result.bundle is not None:
                    err.print(f"bundle of {len(result.graphs)} graphs: {result.artifact}")
            print(result.artifact)
