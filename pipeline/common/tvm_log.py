"""TVM's C++ code logs some warnings that are noise for a user (they fire on every
build or load and need no action). This filters those out of stderr while TVM
runs, passing every other line through."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

NOISE = re.compile(
    r"Warning: (Scope (Saving|Loaded)"  # export_library / load_module bookkeeping
    r"|Fast mode segfaults when there are out-of-bounds indices"  # take() on indices we compute in range
    r"|Creating JSONDatabase)"  # every use of a tuning database names its two files
)


@contextmanager
def quiet_tvm() -> Iterator[None]:
    """Drop TVM's known-noise log lines from file descriptor 2 inside the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if line.strip() and not NOISE.search(line)))
            sys.stderr.flush()
