"""coremltools, imported quietly and only where present; whether the Core ML runtime exists here."""
from __future__ import annotations

import io
import logging
import platform
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from typing import Any

from evit_deploy.dependencies import missing_modules
from evit_deploy.errors import RuntimeMissing

INSTALL_HINT = "pip install 'evit-deploy[coreml]'"


def coremltools_missing() -> str | None:
    return missing_modules(INSTALL_HINT, "coremltools")


def macos_runtime_missing() -> str | None:
    """None where ``MLModel.predict`` works (macOS with coremltools' native runtime)."""
    if sys.platform != "darwin":
        return f"Core ML runs only on macOS/iOS (this is {platform.system()})"
    missing = coremltools_missing()
    if missing:
        return missing
    import importlib.util

    if importlib.util.find_spec("coremltools.libcoremlpython") is None:
        return "this coremltools build has no Core ML runtime (libcoremlpython)"
    return None


@contextmanager
def quiet_coremltools() -> Iterator[io.StringIO]:
    """coremltools' chatter (torchao load failures, torch version, tqdm bars) stays off stderr.

    Failures still surface: as exceptions, which the export turns into one line (with the
    converter's own ERROR line from the captured text, which names the op that failed).
    """
    for name in ("coremltools", "torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    captured = io.StringIO()
    with warnings.catch_warnings(), redirect_stderr(captured):
        warnings.simplefilter("ignore")
        yield captured


def import_coremltools() -> Any:
    missing = coremltools_missing()
    if missing:
        raise RuntimeMissing(missing)
    with quiet_coremltools():
        import coremltools

    return coremltools
