"""Where a tuning run's wall time goes: building candidates, waiting for the device's
measurements, the cost model, and the rest (MetaSchedule's task scheduler and evolutionary
search). The builder, the runner's futures and the cost model are wrapped through
MetaSchedule's own extension points (``PyBuilder``, ``PyRunnerFuture``, ``PyCostModel``);
MetaSchedule calls them all from the thread that runs ``tune_tasks``, one after another,
so the parts add up to the wall time of that call."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms


@dataclass
class TimeLedger:
    """Seconds by part of the tuning, summed over every MetaSchedule call of a run."""

    wall_s: float = 0.0  # inside MetaSchedule's tune_tasks
    build_s: float = 0.0  # building candidates (the builder, blocking)
    build_batches: int = 0
    measure_wait_s: float = 0.0  # waiting for the device's results of a batch
    cost_model_s: float = 0.0  # XGBoost: training on new results and predicting
    candidates: int = 0

    @property
    def search_s(self) -> float:
        """What is left: the task scheduler and the evolutionary search (less its cost model
        calls), the database and the measure callbacks."""
        return max(self.wall_s - self.build_s - self.measure_wait_s - self.cost_model_s, 0.0)

    def as_dict(self) -> dict:
        return {**{k: round(v, 1) if isinstance(v, float) else v for k, v in asdict(self).items()},
                "search_s": round(self.search_s, 1)}

    @contextmanager
    def timing(self, part: str) -> Iterator[None]:
        """Add the time spent in the block to ``<part>_s``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, f"{part}_s", getattr(self, f"{part}_s") + time.perf_counter() - t0)


@derived_object
class TimedFuture(ms.runner.PyRunnerFuture):
    """A runner future whose ``result()`` wait counts as the device's time."""

    def __init__(self, future: ms.runner.RunnerFuture, ledger: TimeLedger) -> None:
        self.future, self.ledger = future, ledger

    def done(self) -> bool:
        return self.future.done()

    def result(self) -> ms.runner.RunnerResult:
        with self.ledger.timing("measure_wait"):
            return self.future.result()


@derived_object
class TimedCostModel(ms.cost_model.PyCostModel):
    """A cost model whose training and predictions are timed."""

    def __init__(self, model: ms.cost_model.CostModel, ledger: TimeLedger) -> None:
        self.model, self.ledger = model, ledger

    def load(self, path: str) -> None:
        self.model.load(path)

    def save(self, path: str) -> None:
        self.model.save(path)

    def update(self, context, candidates, results) -> None:  # noqa: ANN001 - MetaSchedule's types
        with self.ledger.timing("cost_model"):
            self.model.update(context, candidates, results)

    def predict(self, context, candidates) -> np.ndarray:  # noqa: ANN001
        with self.ledger.timing("cost_model"):
            return self.model.predict(context, candidates)
