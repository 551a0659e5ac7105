"""The ``evit`` command: parse, call the API, render. Each command lives in its own module."""
from __future__ import annotations

import os
import warnings
from importlib import metadata
from typing import Annotated

import typer

from evit_deploy.cli._errors import DEBUG_ENV, OneLineUsage

app = typer.Typer(
    name="evit",
    help="Export, verify and profile EfficientViT models for ONNX Runtime, TensorRT, Core ML and LiteRT.",
    cls=OneLineUsage,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        try:
            print(metadata.version("evit-deploy"))
        except metadata.PackageNotFoundError:
            print("unknown")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")] = False,
    version: Annotated[bool | None, typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    if debug:
        os.environ[DEBUG_ENV] = "1"
    else:
        warnings.showwarning = _one_line_warning


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      file: object = None, line: str | None = None) -> None:
    """Warnings are for users here: one line, no source location."""
    if issubclass(category, (FutureWarning, DeprecationWarning)):
        return  # third-party deprecations are our problem, not the user's
    from evit_deploy.cli._common import err

    err.print(f"[yellow]warning:[/] {message}", highlight=False)


def _worker(ctx: typer.Context) -> None:
    """Device side of `--device NAME` (internal): answers evit on the host over ssh."""
    from evit_deploy.remote.worker import main as worker_main

    raise typer.Exit(worker_main(list(ctx.args)))


def _register() -> None:
    from evit_deploy.cli import debug, export, profile, segment, targets, verify
    from evit_deploy.cli import eval as eval_cli
    from evit_deploy.cli._common import target_options_help

    extra = {"allow_extra_args": True, "ignore_unknown_options": True}
    app.command("export", context_settings=extra, epilog=target_options_help())(export.export)
    app.command("verify")(verify.verify)
    app.command("profile")(profile.profile)
    app.command("eval")(eval_cli.eval_command)
    app.command("debug")(debug.debug)
    app.command("segment")(segment.segment)
    app.command("targets")(targets.targets)
    app.command("_worker", hidden=True, add_help_option=False,
                context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(_worker)
    from evit_deploy.cli.devices import devices_app

    app.add_typer(devices_app, name="devices")
    from evit_deploy.cli.models import models_app

    app.add_typer(models_app, name="models")
    from evit_deploy.cli.benchmark import benchmark_app

    app.add_typer(benchmark_app, name="benchmark")


_register()


def main() -> None:
    app()
