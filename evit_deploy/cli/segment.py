"""``evit segment``: one SAM prompt on one photo -> mask PNG, overlay PNG, scores."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from evit_deploy.cli._common import out
from evit_deploy.cli._errors import handle_errors
from evit_deploy.cli._requests import takes
from evit_deploy.requests import SegmentRequest


@takes(SegmentRequest)
def segment(
    request: SegmentRequest,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the scores as JSON ('-' for stdout).")] = None,
) -> None:
    """Segment IMAGE with a SAM export (no PyTorch) or zoo model (PyTorch). Exit 0 ok, 2 usage or input error."""
    from evit_deploy.segment import segment as run
    from evit_deploy.segment import write_scores

    with handle_errors():
        result = run(request)
        if json_path is not None and str(json_path) == "-":
            print(json.dumps(result.to_dict(), indent=2))
            return
        if json_path is not None:
            write_scores(json_path, result)
        shown = ", ".join(f"{s:.3f}" + (" *" if i == result.chosen else "") for i, s in enumerate(result.scores))
        out.print(f"mask {result.files['mask']} ({result.to_dict()['mask_fraction']:.1%} of the image), overlay "
                  f"{result.files['overlay']}; scores {shown} (mask token {result.tokens[result.chosen]}); "
                  f"encoder {result.timings_ms['encoder']:.0f} ms, decoder {result.timings_ms['decoder']:.0f} ms "
                  f"({result.engine['engine']})", markup=False, highlight=False)
