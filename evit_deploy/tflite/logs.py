"""The C++ runtime's stderr chatter, captured so errors can quote it and users are spared it."""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def native_logs_quiet() -> Iterator[list[str]]:
    """Send the C++ runtime's stderr chatter (XNNPACK banners, absl warnings) to a buffer.

    The captured lines are handed back so an error can quote them; Python exceptions still
    carry the runtime's own message (e.g. ``div.cc ... failed to invoke``).
    """
    captured: list[str] = []
    try:
        fd = os.dup(2)
    except OSError:  # no usable stderr (some embedded hosts): nothing to redirect
        yield captured
        return
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            _flush_c_stdio()
            os.dup2(fd, 2)
            os.close(fd)
            sink.seek(0)
            captured.extend(sink.read().decode(errors="replace").splitlines()[-50:])


def _flush_c_stdio() -> None:
    """Flush C stdio buffers so native log lines land in the redirected stream, not later."""
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # pragma: no cover - non-POSIX hosts
        pass
