"""``offline()``: a block in which network accesses and program starts made from Python are
blocked and listed, for converters that phone home (MNN's command line). Standard library only."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

# Audit events of a network access or of a program started (a ``pip install``, say).
GUARDED = ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.sendto", "urllib.Request",
           "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn")
_attempts: list[str] | None = None  # while offline(): what was tried
_hooked = False


def _audit(event: str, args: tuple) -> None:
    if _attempts is not None and event in GUARDED:
        _attempts.append(f"{event}{args!r}"[:200])
        raise PermissionError(f"blocked while offline: {event}")


@contextmanager
def offline() -> Iterator[list[str]]:
    """Yield the list of what was tried in the block (each one was refused). Audit hooks
    cannot be removed, so one is installed per process and is idle outside the block."""
    global _attempts, _hooked
    if not _hooked:
        sys.addaudithook(_audit)
        _hooked = True
    _attempts = []
    try:
        yield _attempts
    finally:
        _attempts = None
