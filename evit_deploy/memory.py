"""How much memory this machine can still give, and refusing work that cannot fit.

A calibration that outgrows the machine is killed by the kernel's OOM killer: exit 137, no
message, and on a shared machine other people's processes may go with it. Checking first costs
one read of ``/proc/meminfo``.
"""
from __future__ import annotations

from pathlib import Path

from evit_deploy.errors import UsageError

GIB = 2**30


def available_bytes() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` (Linux), None where there is no such file."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def require(needed: int, what: str, hint: str) -> None:
    """Refuse ``what`` in one line when it needs more than the memory available now."""
    available = available_bytes()
    if available is not None and needed > available:
        raise UsageError(f"{what} needs about {needed / GIB:.1f} GiB of memory but {available / GIB:.1f} GiB "
                         f"are available; {hint}")
