"""A converter or runtime that fails on a valid model: one line for the user, the whole story in a log.

Exit code 3 tells CI "the toolchain failed" apart from "you called it wrong" (2): the line
names the tool, its version and the tool's own error line, and points at a log file with
the traceback and whatever the tool printed (``$EVIT_LOG_DIR``, default ``~/.cache/evit/logs``).
"""
from __future__ import annotations

import os
import re
import traceback
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

from evit_deploy.dependencies import package_versions
from evit_deploy.errors import ToolchainError, disk_full_cause

LOG_ENV = "EVIT_LOG_DIR"


def log_dir() -> Path:
    return Path(os.environ.get(LOG_ENV) or Path.home() / ".cache" / "evit" / "logs").expanduser()


def first_line(err: BaseException) -> str:
    """The error's own first meaningful line (its type name when it has no message)."""
    for line in str(err).splitlines():
        if line.strip():
            return line.strip()[:300]
    return type(err).__name__


def toolchain_error(tool: str, action: str, err: BaseException, output: Iterable[str] = (),
                    line: str | None = None) -> Exception:
    """``litert-torch 0.10.0 failed to convert m: <its line> (full log: PATH)``, with the log written.

    ``line``: the tool's own error line where it printed a better one than the exception's
    (coremltools names the failing op in an ``ERROR`` log line). A full disk behind ``err`` is not
    the tool's failure: that ``OSError`` is returned instead, for the staging folder (which knows
    which disk) to say so (``errors.DiskFull``, exit 2)."""
    full = disk_full_cause(err)
    if full is not None:
        return full
    version = package_versions(tool).get(tool, "(version unknown)")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    path = log_dir() / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', tool)}-{stamp}.log"
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    output = list(output)
    captured = "\n".join(output)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{tool} {version} failed {action}\n\n{text}\n--- tool output ---\n{captured}\n")
        where = f"full log: {path}"
    except OSError as write_error:
        where = f"no log written: {write_error.strerror or write_error}"
    return ToolchainError(f"{tool} {version} failed {action}: {line or first_line(err)} ({where})")
