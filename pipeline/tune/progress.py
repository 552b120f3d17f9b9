"""The progress line a tuning run prints while MetaSchedule searches."""

from __future__ import annotations

import time
from collections.abc import Callable


class ProgressPrinter:
    """A progress line when a count moved, at most every 5 s (and at the end). Candidates
    are counted when sent to the device and when the device has measured them; the tasks
    measured and the best-kernels sum come from MetaSchedule, which gathers a batch's
    results only when its scheduler returns to that task (for a first round, after it)."""

    def __init__(self, log: Callable[[str], None], t0: float) -> None:
        self.log, self.t0 = log, t0
        self.device_measured: Callable[[], int] = lambda: 0
        self.start(0)

    def follow(self, measured: Callable[[], int]) -> None:
        """Count measurements as the device ends them (``DeviceWatchRunner.measured``)."""
        self.device_measured = measured

    def start(self, budget: int) -> None:
        """A new tuning call (phase) with its own budget."""
        self.budget, self.sent, self.progress, self.last = budget, 0, None, (0.0, (-1, -1))
        self.measured_before = self.device_measured()

    def on_batch(self, candidates: int) -> None:
        self.sent += candidates
        self._show()

    def on_update(self, progress) -> None:  # noqa: ANN001 - schedules.tuning.TuneProgress
        self.progress = progress
        self._show()

    def _show(self) -> None:
        now = time.perf_counter()
        p = self.progress
        measured = min(max(self.device_measured() - self.measured_before, p.trials if p else 0), self.budget)
        counts = (self.sent, measured)
        if counts == self.last[1] or (now - self.last[0] < 5 and measured < self.budget):
            return
        self.last = (now, counts)
        best = p.best_kernels_ms() if p else 0.0
        tasks = f"{len(p.best_ms or {})}/{p.tasks}" if p else "0"
        self.log(f"  trials sent {min(self.sent, self.budget)}/{self.budget}  measured {measured}  tasks measured "
                 f"{tasks}  errors {p.errors if p else 0}  best-kernels sum {best:.1f} ms  "
                 f"elapsed {now - self.t0:.0f} s")
