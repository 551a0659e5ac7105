"""Turn expected failures into one line on stderr and the right exit code."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from evit_deploy.errors import EvitError

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
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        raise typer.Exit(130) from None
