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


class DiskFull(UsageError):
    """The disk (or quota) filled while writing: the user frees space or picks another place, exit 2."""

    @classmethod
    def from_os_error(cls, err: OSError, where: object) -> DiskFull:
        return cls(f"no space left on the device holding {where} ({err.strerror or err}); free space there or "
                   "choose another --out (nothing was published)")


NO_SPACE = (28, 122)  # ENOSPC, EDQUOT


def disk_full_cause(err: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT behind ``err`` (itself, or what it was raised from), if any: a converter that
    fails because the disk is full has not failed."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in NO_SPACE:
            return current
        current = current.__cause__ or current.__context__
    return None


class CheckFailed(EvitError):
    """A check ran and failed (parity, overflow, engine precision): exit 1."""

    exit_code = 1


class ToolchainError(EvitError):
    """A converter, builder or runtime ran on valid input and failed (a TensorRT build): exit 3."""

    exit_code = 3
