"""Errors a user can act on.

Every failure evit expects (bad input, a failed check, a missing runtime) is an
``EvitError`` that carries one line for the user and the process exit code, so the
CLI prints the line and exits without a traceback, and API callers can catch one type.
"""
from __future__ import annotations


class EvitError(Exception):
    """Base class: ``str(err)`` is the one line shown to the user."""

    exit_code: int = 2

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        # one line whatever the input held: a path or name with a line break is shown escaped
        super().__init__(message.replace("\r", "\\r").replace("\n", "\\n"))
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(EvitError):
    """The input is wrong (name, path, flag, file content): exit 2."""

    exit_code = 2


class RuntimeMissing(UsageError):
    """An optional runtime or converter is not installed or cannot run here: exit 2."""


class CheckFailed(EvitError):
    """A check ran and failed (parity, overflow, engine precision): exit 1."""

    exit_code = 1


class ToolchainError(EvitError):
    """A converter, builder or runtime ran on valid input and failed (a TensorRT build): exit 3."""

    exit_code = 3
