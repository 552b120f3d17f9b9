"""Files written so that a failure never leaves a half-written one behind, and the lock
that keeps two runs out of one directory."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: object, indent: int = 1) -> None:
    """``data`` as JSON with a final newline, atomically."""
    write_text(path, json.dumps(data, indent=indent) + "\n")


def read_json(path: str | Path, default: object) -> object:
    """The JSON in ``path``, or ``default`` for a missing or unreadable file (such files are
    caches and reports: recomputed, never trusted)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


class LockedError(RuntimeError):
    """Another live process holds the lock."""


@contextmanager
def exclusive_lock(path: str | Path, what: str, wait: float = 0.0) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (the kernel releases it when the holder dies,
    so a killed run never leaves a stale lock); refuse if another process still has it after
    ``wait`` seconds (at once by default)."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                    raise LockedError(f"{what} is in use by another run (pid {holder}); wait for it to finish "
                                      f"or stop it") from None
                time.sleep(1.0)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)
