"""``evit profile``: latency, throughput and memory of an artifact (or eager PyTorch)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from evit_deploy.cli._common import iteration_progress, out
from evit_deploy.cli._errors import handle_errors


def profile(
    artifact: Annotated[str, typer.Argument(help="An exported artifact, or a zoo model name with --target torch.")],
    target: Annotated[Optional[str], typer.Option(help="'torch' to time a zoo model in eager PyTorch.")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Weights for --target torch.")] = None,
    device: Annotated[str, typer.Option(help="Where to run: cpu, cuda.")] = "cpu",
    threads: Annotated[Optional[int], typer.Option(help="Runtime threads (default: the runtime's).")] = None,
    warmup: Annotated[int, typer.Option(help="Untimed runs before timing.")] = 10,
    iters: Annotated[int, typer.Option(help="Timed runs.")] = 50,
    batch: Annotated[Optional[int], typer.Option(help="Batch (dynamic artifacts only).")] = None,
    resolution: Annotated[Optional[str], typer.Option(help="HxW (dynamic artifacts and --target torch).")] = None,
    per_layer: Annotated[bool, typer.Option("--per-layer", help="Top operators from the runtime's profiler.")] = False,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write results as JSON ('-' for stdout).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Time ARTIFACT: latency p50/p90/p99/mean/std/min, throughput, load, first inference, peak RSS."""
    from evit_deploy import api
    from evit_deploy.configs import parse_resolution
    from evit_deploy.report import layer_table, profile_table, write_json

    with handle_errors():
        to_stdout = json_path is not None and str(json_path) == "-"
        with iteration_progress(quiet or to_stdout, "profiling") as tick:
            result = api.profile(artifact, target=target, weights=weights, device=device, threads=threads,
                                 warmup=warmup, iters=iters, batch=batch,
                                 resolution=parse_resolution(resolution) if resolution else None,
                                 per_layer=per_layer, on_iteration=tick)
        if to_stdout:
            print(json.dumps(result.to_dict(), indent=2))
            return
        if json_path is not None:
            write_json(json_path, result.to_dict())
        if not quiet:
            out.print(profile_table([result], title=f"{result.model} · {result.target} {result.precision}"))
            if per_layer:
                out.print(layer_table(result))
        else:
            out.print(f"p50 {result.latency_ms.p50:.2f} ms  {result.throughput_ips:.1f} img/s", markup=False)
