"""Pieces every command shares: consoles, progress, target-option parsing."""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from evit_deploy.errors import UsageError

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def check_output_path(path: Path | None, option: str, suffix: str | None = None) -> None:
    """Refuse an output path that cannot be written before any work runs ('-' is stdout)."""
    if path is None or str(path) == "-":
        return
    if suffix is not None and path.suffix.lower() != suffix:
        raise UsageError(f"{option} {path}: give a {suffix} file name")
    if not path.parent.is_dir():
        raise UsageError(f"{option} {path}: folder {path.parent} does not exist")


@contextmanager
def stage_progress(quiet: bool) -> Iterator[Callable[[str], None]]:
    """A spinner on stderr showing the current stage; silent with --quiet/--json."""
    if quiet or not sys.stderr.isatty():
        yield lambda message: None
        return
    with err.status("starting") as status:
        yield lambda message: status.update(message)


@contextmanager
def iteration_progress(quiet: bool, label: str) -> Iterator[Callable[[int, int], None]]:
    """A bar for counted work (profiling iterations, samples)."""
    if quiet or not sys.stderr.isatty():
        yield lambda done, total: None
        return
    columns = (SpinnerColumn(), TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


@contextmanager
def device_progress(quiet: bool, names: list[str]) -> Iterator[tuple[Callable[[str, str], None],
                                                                     Callable[[str, int, int], None]]]:
    """One progress line per device: its stage, then its timed iterations."""
    if quiet or not sys.stderr.isatty():
        yield (lambda name, message: None), (lambda name, done, total: None)
        return
    columns = (SpinnerColumn(), TextColumn("{task.fields[device]:<16}"), TextColumn("{task.description:<36}"),
               BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        tasks = {name: bar.add_task("waiting", total=None, device=name) for name in names}

        def on_stage(name: str, message: str) -> None:
            bar.update(tasks[name], description=message[:36])
            if message == "done" or message.startswith("failed"):
                bar.stop_task(tasks[name])

        def on_iteration(name: str, done: int, total: int) -> None:
            bar.update(tasks[name], description="profiling", completed=done, total=total)

        yield on_stage, on_iteration


def parse_target_options(args: list[str]) -> dict[str, Any]:
    """``--foo-bar 3 --flag --no-other`` -> {"foo_bar": "3", "flag": True, "other": False}.

    Target-specific flags are not declared on the command: each target's options model
    validates them, so a new target brings its flags without touching the CLI.
    """
    options: dict[str, Any] = {}
    i = 0
    while i < len(args):
        token = args[i]
        if not token.startswith("--") or token == "--":
            raise UsageError(f"unexpected argument {token!r}; options look like --name value")
        key, _, inline = token[2:].partition("=")
        key = key.replace("-", "_")
        if inline:
            value: Any = inline
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            value = args[i + 1]
            i += 1
        elif key.startswith("no_"):
            key, value = key[3:], False
        else:
            value = True
        if key in options:  # repeated flags build a list (e.g. --keep-fp32 a --keep-fp32 b)
            previous = options[key]
            value = [*(previous if isinstance(previous, list) else [previous]), value]
        options[key] = value
        i += 1
    return options


def target_options_help() -> str:
    """Each target's own flags, for the export command's help."""
    from evit_deploy.targets.base import all_targets

    lines = ["Target options (given after the others, validated by the target):"]
    for name, cls in all_targets().items():
        fields = cls.options_model.model_fields
        if fields:
            flags = ", ".join(f"--{f.replace('_', '-')}" for f in fields)
            lines.append(f"  {name}: {flags}")
    return "\n\n".join(lines)
