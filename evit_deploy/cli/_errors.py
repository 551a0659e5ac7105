"""Turn expected failures into one line on stderr and the right exit code."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import typer
from typer.core import TyperGroup

from evit_deploy.errors import DiskFull, EvitError, disk_full_cause

try:  # Typer 0.26+ carries its own click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older Typer on the real click
    from click import exceptions as click_errors  # type: ignore[no-redef]

DEBUG_ENV = "EVIT_DEBUG"


@contextmanager
def handle_errors() -> Iterator[None]:
    """``EvitError`` -> ``error: <line>`` and its exit code; a traceback only with --debug."""
    try:
        yield
    except EvitError as err:
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"error: {err}", file=sys.stderr)
        raise typer.Exit(err.exit_code) from None
    except OSError as err:  # a full disk outside any export's staging (a report, a plot, a manifest update)
        full = disk_full_cause(err)
        if full is None or os.environ.get(DEBUG_ENV):
            raise
        print(f"error: {DiskFull.from_os_error(full, full.filename or 'the output')}", file=sys.stderr)
        raise typer.Exit(DiskFull.exit_code) from None
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        raise typer.Exit(130) from None


class OneLineUsage(TyperGroup):
    """Typer's parse errors (a bad ``--batch two``, a missing MODEL, an unknown flag) as one
    ``error:`` line and exit 2, like every other usage error, instead of a boxed usage screen."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click_errors.NoArgsIsHelpError as err:  # `evit` alone: the overview, not an error
            print(err.ctx.get_help())
            code = 0
        except click_errors.UsageError as err:
            where = err.ctx.command_path if err.ctx is not None else "evit"
            message = " ".join(err.format_message().split())
            print(f"error: {message} (see `{where} --help`)", file=sys.stderr)
            code = 2
        except typer.Abort:
            print("error: interrupted", file=sys.stderr)
            code = 130
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)
