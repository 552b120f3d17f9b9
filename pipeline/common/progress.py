"""The progress bar of commands that go through many images."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm


@contextmanager
def progress_bar(total: int, desc: str, enabled: bool = True) -> Iterator[tqdm]:
    """A bar on stderr, updated by hand (``bar.update(1)``): an iterating bar closes itself,
    leaving its line, as soon as an exception leaves the loop, before it could be told to
    clear. On an error the bar is cleared, so the error line stands alone."""
    bar = tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=not enabled, dynamic_ncols=True)
    try:
        yield bar
    except BaseException:
        bar.leave = False
        raise
    finally:
        bar.close()
