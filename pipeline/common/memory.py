"""This process's resident memory, as Linux counts it."""

from __future__ import annotations

import contextlib
import resource
from pathlib import Path


def _status_mb(field: str) -> float | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024.0  # kB
    return None


def rss_mb() -> float | None:
    """Resident now (None without /proc)."""
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """This process's own peak resident memory. Linux keeps ``ru_maxrss`` across exec, so a
    worker started by a large orchestrator would report the orchestrator's peak; VmHWM
    belongs to the address space, which exec replaces."""
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
