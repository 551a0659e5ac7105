"""``evit targets``: which deployment targets exist, what each needs, and whether it works here."""
from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from evit_deploy.cli._common import out


def targets(
    json_out: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """List the targets: precisions, file types, what to install, and whether export and run work here."""
    from evit_deploy.targets.base import all_targets

    rows = []
    for name, cls in all_targets().items():
        target = cls()
        rows.append({"name": name, "extensions": list(cls.extensions), "precisions": list(cls.precisions),
                     "description": cls.description, "requires": cls.requires,
                     "export_here": target.available() or "yes", "run_here": target.runtime_available() or "yes"})
    if json_out:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="evit targets")
    for column in ("target", "artifact", "precisions", "needs", "export here", "run here"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], ", ".join(row["extensions"]), ", ".join(row["precisions"]), row["requires"],
                      row["export_here"], row["run_here"])
    out.print(table)
