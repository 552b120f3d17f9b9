"""TVM's C++ code logs some warnings that are noise for a user (they fire on every
build or load and need no action). This filters those out of stderr while TVM
runs, passing every other line through."""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

NOISE = re.compile(
    r"Warning: (Scope (Saving|Loaded)"  # export_library / load_module bookkeeping
    r"|Fast mode segfaults when there are out-of-bounds indices"  # take() on indices we compute in range
    r"|Creating JSONDatabase)"  # every use of a tuning database names its two files
)


class _Redirect:
    """File descriptor 2 into a temporary file while any thread is inside ``quiet_tvm()``:
    the first block in redirects, the last one out restores and filters, so blocks may nest
    and run in several threads at once (parallel builds)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.saved = -1
        self.capture = None

    def enter(self) -> None:
        with self.lock:
            if self.depth == 0:
                sys.stderr.flush()
                self.saved, self.capture = os.dup(2), tempfile.TemporaryFile(mode="w+b")
                os.dup2(self.capture.fileno(), 2)
            self.depth += 1

    def exit(self) -> None:
        with self.lock:
            self.depth -= 1
            if self.depth:
                return
            sys.stderr.flush()
            os.dup2(self.saved, 2)
            os.close(self.saved)
            self.capture.seek(0)
            lines = self.capture.read().decode(errors="replace").splitlines(keepends=True)
            self.capture.close()
            sys.stderr.write("".join(line for line in lines if line.strip() and not NOISE.search(line)))
            sys.stderr.flush()


_REDIRECT = _Redirect()


@contextmanager
def quiet_tvm() -> Iterator[None]:
    """Drop TVM's known-noise log lines from file descriptor 2 inside the block."""
    _REDIRECT.enter()
    try:
        yield
    finally:
        _REDIRECT.exit()
