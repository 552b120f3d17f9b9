"""Signals during tuning: a stop request that MetaSchedule can survive, and ``kill PID``
treated like Ctrl-C."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def handling(handler: Callable, *signals: signal.Signals) -> Iterator[None]:
    """``handler`` for ``signals`` inside the block (main thread only: elsewhere Python refuses)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def interrupt(_signum: int, _frame) -> None:  # noqa: ANN001
    """``kill PID`` stops a run as cleanly as Ctrl-C does (servers stopped, database whole)."""
    raise KeyboardInterrupt


def request_stop(stop: threading.Event) -> Callable:
    """While MetaSchedule's C++ scheduler runs, SIGINT and SIGTERM only set ``stop``: the runner
    raises at its next batch, where the scheduler unwinds cleanly (a KeyboardInterrupt raised at
    an arbitrary point in there crashed the process). A second signal interrupts at once."""
    def request(_signum: int, _frame) -> None:  # noqa: ANN001
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    return request
