"""``evit devices``: presets and the inventory; ``evit devices check NAME`` asks a device what it has."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from evit_deploy.cli._common import err, out
from evit_deploy.cli._errors import handle_errors

devices_app = typer.Typer(help="Device presets and your inventory of SSH devices (devices.yaml).",
                          invoke_without_command=True, no_args_is_help=False)

InventoryOption = Annotated[Path | None, typer.Option(
    "--inventory", help="devices.yaml (default: $EVIT_DEVICES, else ~/.config/evit/devices.yaml).")]


@devices_app.callback(invoke_without_command=True)
def devices(
    ctx: typer.Context,
    inventory: InventoryOption = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print presets and inventory as JSON.")] = False,
) -> None:
    """List the device presets and the devices of your inventory."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    from evit_deploy.devices import PRESETS, load_inventory

    with handle_errors():
        inv = load_inventory(inventory)
        if json_out:
            print(json.dumps({
                "presets": [p.model_dump() for p in PRESETS.values()],
                "inventory": {"source": inv.source, "devices": [d.model_dump() for d in inv.devices.values()]},
            }, indent=2))
            return
        presets = Table(title="presets")
        for column in ("preset", "kind", "default target", "runtime", "for"):
            presets.add_column(column)
        for p in PRESETS.values():
            presets.add_row(p.name, p.kind, f"{p.target} {p.precision}", p.runtime_device, p.description)
        out.print(presets)
        if inv.source is None:
            out.print("no inventory: write ~/.config/evit/devices.yaml (or pass --inventory, or set $EVIT_DEVICES); "
                      "see README, Remote devices", markup=False)
            return
        table = Table(title=f"inventory · {inv.source}")
        for column in ("device", "ssh", "preset", "runs", "evit there", "workdir"):
            table.add_column(column)
        for d in inv.devices.values():
            command = f"{d.python} -m evit_deploy…" if d.python else (d.evit or "evit")
            table.add_row(d.name, d.address, d.preset, f"{d.default_target} {d.default_precision} "
                          f"({d.default_runtime_device})", command, d.workdir)
        out.print(table)
        if not inv.devices:
            out.print("the inventory lists no devices", markup=False)


@devices_app.command("check", no_args_is_help=True)
def check(
    names: Annotated[str, typer.Argument(help="NAME[,NAME...] of the inventory.")],
    inventory: InventoryOption = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print what the devices reported as JSON.")] = False,
) -> None:
    """Reach each device: ssh, evit's version there, runtimes, CPU/GPU, memory and state. Exit 2 if any fails."""
    from concurrent.futures import ThreadPoolExecutor

    from evit_deploy.devices import load_inventory, parse_device_list
    from evit_deploy.errors import EvitError
    from evit_deploy.remote.flows import check_device

    with handle_errors():
        inv = load_inventory(inventory)
        wanted = parse_device_list(names)
        for name in wanted:
            inv.get(name)  # an unknown name is a usage error before anything connects

        def one(name: str) -> dict[str, Any]:
            try:
                return check_device(name, inventory=inv)
            except EvitError as error:
                return {"device": name, "reachable": False, "error": str(error), "exit_code": error.exit_code}

        with ThreadPoolExecutor(max_workers=min(16, len(wanted))) as pool:
            reports = list(pool.map(one, wanted))
        if json_out:
            print(json.dumps(reports if len(reports) > 1 else reports[0], indent=2))
        else:
            for report in reports:
                if "error" not in report:
                    out.print(_check_table(report))
        failed = [r for r in reports if "error" in r]
        for report in failed:
            err.print(f"error: {report['error']}", markup=False, highlight=False)
        if failed:
            raise typer.Exit(max(r["exit_code"] for r in failed))


def _check_table(report: dict[str, Any]) -> Any:
    from rich.table import Table

    from evit_deploy.machine import state_summary

    system = report.get("system", {})
    table = Table(title=f"{report['device']} · {report['address']} · {report['preset']}", show_header=False)
    table.add_column("")
    table.add_column("")
    rows = [
        ("reachable", f"yes ({1e3 * report['connect_s']:.0f} ms to answer)"),
        ("evit", f"{report.get('evit')} (python {report.get('python')})"),
        ("host", f"{system.get('hostname')} · {system.get('os')}"),
        ("CPU", f"{system.get('cpu')} · {system.get('cores')} cores"),
        ("memory", f"{system.get('memory_mb') or '?'} MB"),
        ("GPU", "; ".join(_gpu(g) for g in system.get("gpus", [])) or "none found"),
        ("state", state_summary(report.get("state", {}))),
    ]
    for name, version in (system.get("runtimes") or {}).items():
        rows.append((f"runtime {name}", version or "not installed"))
    for target, reason in (report.get("targets") or {}).items():
        rows.append((f"runs {target}", "yes" if reason is None else f"no: {reason}"))
    for label, value in rows:
        table.add_row(label, str(value))
    return table


def _gpu(gpu: dict[str, Any]) -> str:
    memory = f", {gpu['memory_mb']} MB" if gpu.get("memory_mb") else ""
    shared = " shared" if gpu.get("shared") else ""
    return f"{gpu.get('name')}{memory}{shared}"
