"""``evit profile``: latency, throughput and memory of an artifact (or eager PyTorch), here or on devices."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from evit_deploy.cli._common import device_progress, err, iteration_progress, out
from evit_deploy.cli._errors import handle_errors
from evit_deploy.cli._requests import takes
from evit_deploy.errors import UsageError
from evit_deploy.requests import ProfileRequest


@takes(ProfileRequest)
def profile(
    request: ProfileRequest,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write results as JSON ('-' for stdout).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Time ARTIFACT: latency p50/p90/p99/mean/std/min, throughput, load, first inference, peak RSS.

    With several devices, each device's failure is its own error line; the others' results are
    still shown and written, and the exit code is non-zero (2) if any device failed.
    """
    from evit_deploy import api
    from evit_deploy.devices import is_local, parse_device_list
    from evit_deploy.report import layer_table, write_json

    with handle_errors():
        names = parse_device_list(request.device)
        to_stdout = json_path is not None and str(json_path) == "-"
        if len(names) > 1 or not is_local(names[0]):
            if request.target is not None:
                raise UsageError(f"--target {request.target} profiles on this machine; export an artifact to "
                                 f"profile it on {request.device}")
            _profile_devices(request, names, json_path, quiet or to_stdout, quiet)
            return
        with iteration_progress(quiet or to_stdout, "profiling") as tick:
            profiled = api.profile(request, on_iteration=tick)
        results = list(profiled.values()) if isinstance(profiled, dict) else [profiled]
        data = ({"graphs": {name: r.to_dict() for name, r in profiled.items()}} if isinstance(profiled, dict)
                else profiled.to_dict())
        if to_stdout:
            print(json.dumps(data, indent=2))
            _warn_unstable(results)
            return
        if json_path is not None:
            write_json(json_path, data)
        first = results[0]
        if not quiet:
            out.print(_table(results, f"{first.model} · {first.target} {first.precision}"))
            if request.per_layer:
                for result in results:
                    out.print(layer_table(result))
        else:
            for result in results:
                name = f"{Path(result.artifact).name}: " if len(results) > 1 else ""
                out.print(f"{name}p50 {result.latency_ms.p50:.2f} ms  {result.throughput_ips:.1f} img/s"
                          f"{_unstable_mark(result)}", markup=False)
        _warn_unstable(results)


def _profile_devices(request: ProfileRequest, names: list[str], json_path: Path | None, silent: bool,
                     quiet: bool) -> None:
    """Every device at once; a failed device is an error line, the others still report."""
    from evit_deploy.errors import EvitError
    from evit_deploy.remote.flows import profile_many
    from evit_deploy.report import layer_table, write_json

    with device_progress(silent, names) as (on_stage, on_iteration):
        outcomes = profile_many(request, names, on_stage=on_stage, on_iteration=on_iteration)
    results = [o.result for o in outcomes if o.result is not None]
    failures = [o for o in outcomes if o.result is None]
    if len(names) == 1 and failures:
        raise EvitError(failures[0].error or "failed", exit_code=failures[0].exit_code)
    if json_path is not None:
        data: dict[str, Any] = (results[0].to_dict() if len(names) == 1 else
                                {"results": [r.to_dict() for r in results],
                                 "errors": [o.to_dict() for o in failures]})
        if str(json_path) == "-":
            print(json.dumps(data, indent=2))
        else:
            write_json(json_path, data)
    if results and not silent:
        first = results[0]
        out.print(_table(results, f"{first.model} · {first.target} {first.precision} · "
                                  f"{len(results)} of {len(names)} device(s)"))
        if request.per_layer:
            for result in results:
                out.print(layer_table(result))
    elif results and quiet:
        for r in results:
            out.print(f"{r.device}: p50 {r.latency_ms.p50:.2f} ms  {r.throughput_ips:.1f} img/s{_unstable_mark(r)}",
                      markup=False)
    _warn_unstable(results)
    for failure in failures:
        err.print(f"error: {failure.error}", markup=False, highlight=False)
    if failures:
        err.print(f"{len(failures)} of {len(names)} device(s) failed: {', '.join(f.device for f in failures)}",
                  markup=False, highlight=False)
        raise typer.Exit(max(f.exit_code for f in failures))


def _unstable_mark(result: Any) -> str:
    return "" if result.spread.trustworthy else "  (unstable: see the warning)"


def _warn_unstable(results: list[Any]) -> None:
    """Figures whose runs disagree are said to be so, on stderr, whatever else is printed."""
    for result in results:
        if not result.spread.trustworthy:
            where = f"{Path(result.artifact).name} on {result.device}"
            err.print(f"[yellow]warning:[/] {where}: latency {result.spread.summary()}", highlight=False)


def _table(results: list[Any], title: str) -> Any:
    """``report.profile_table`` plus, for devices, the conditions each figure was measured under."""
    from evit_deploy.machine import state_summary
    from evit_deploy.report import profile_table

    table = profile_table(results, title=title)
    if any("remote" in r.host or "state" in r.host for r in results):
        table.add_row("device state", *(state_summary(r.host.get("state", {})) for r in results))
    if any("remote" in r.host for r in results):
        table.add_row("artifact copy", *(_copy(r.host.get("remote")) for r in results))
    if any("power" in r.host for r in results):
        table.add_row("module power W", *(_power(r.host.get("power"), "mean_w", "{:.2f}") for r in results))
        table.add_row("energy mJ/image", *(_power(r.host.get("power"), "mj_per_image", "{:.1f}") for r in results))
        unread = [(r.host.get("power") or {}) for r in results]
        if any(p and p.get("mean_w") is None for p in unread):  # why there is no figure (no rails, too short)
            table.add_row("power note", *(p.get("note", "") if p and p.get("mean_w") is None else "" for p in unread))
    return table


def _copy(remote: dict[str, Any] | None) -> str:
    if not remote:
        return "local"
    if remote.get("copy") == "skipped":
        return "already there"
    return f"{remote.get('copy')} {remote.get('uploaded_bytes', 0) / 2**20:.1f} MB in {remote.get('upload_s', 0):.1f} s"


def _power(power: dict[str, Any] | None, key: str, fmt: str) -> str:
    value = (power or {}).get(key)
    return fmt.format(value) if isinstance(value, (int, float)) else "-"
