"""A tuning work directory, ``tuning/<tag>/``: the one place its layout is known.

It holds MetaSchedule's JSON database (format owned by ``schedules.tuning``), the untuned
per-task timings (a cache: recomputed when the task set changes), the last run's
``report.json``, ``warm_start.json`` when the run started from the records store (which
files, how many records were re-measured), the ONNX export and the libraries built for
timing, and ``tune.lock``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pipeline.common.files import exclusive_lock, read_json, write_json
from pipeline.common.paths import TUNING
from pipeline.common.shapes import size_label

LOCK_FILE = "tune.lock"
UNTUNED_TASKS = "untuned_tasks.json"
REPORT = "report.json"
WARM_START = "warm_start.json"


def tuning_tag(model: str, device: str, sizes: Sequence[tuple[int, int]], threads: int, variant: str = "") -> str:
    """The name of the work directory (and of the tuned artifact, ``tuned-<tag>``). The input
    sizes and the thread count are part of it (kernels tuned for one count are not the best
    for another), and so are graph options other than the defaults (``variant``, e.g. ``-nchw``)."""
    return f"{model}-{device}-{size_label(sizes)}-t{threads}{variant}"


@dataclass(frozen=True)
class WorkDir:
    path: Path

    @classmethod
    def of(cls, model: str, device: str, sizes: Sequence[tuple[int, int]], threads: int, root: Path | None = None,
           variant: str = "") -> WorkDir:
        return cls((root or TUNING) / tuning_tag(model, device, sizes, threads, variant))

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One run at a time (a lock the kernel drops if the holder dies)."""
        with exclusive_lock(self.path / LOCK_FILE, f"tuning work directory {self.path}"):
            yield

    # The database, through schedules.tuning (imported lazily: it loads TVM).
    def repair(self) -> int:
        from schedules import tuning

        return tuning.repair_database(self.path)

    def measured_trials(self) -> int:
        from schedules import tuning

        return tuning.measured_trials(self.path)

    def trials_per_task(self, tasks: list) -> dict[str, int]:
        from schedules import tuning

        return tuning.trials_per_task(tasks, self.path)

    def check_target(self, target) -> None:  # noqa: ANN001 - tvm.target.Target, imported lazily
        """Refuse a database measured for another target (a ValueError naming both)."""
        from schedules import tuning

        tuning.check_target(self.path, target)

    def database_digest(self) -> str | None:
        from schedules import tuning

        return tuning.database_digest(self.path)

    # Files of the tuning job.
    @property
    def onnx_path(self) -> Path:
        return self.path / "model.onnx"

    def library_path(self, name: str) -> Path:
        """Where a library built only to be timed on the device goes."""
        return self.path / f"{name}.so"

    def untuned_tasks(self) -> dict[str, float]:
        return read_json(self.path / UNTUNED_TASKS, {})

    def save_untuned_tasks(self, times: dict[str, float]) -> None:
        write_json(self.path / UNTUNED_TASKS, times)

    def warm_start(self) -> dict | None:
        """The warm start this directory began with (None: it began from scratch)."""
        return read_json(self.path / WARM_START, None)

    def save_warm_start(self, warm: dict) -> None:
        write_json(self.path / WARM_START, warm)

    def report(self) -> dict:
        return read_json(self.path / REPORT, {})

    @property
    def report_path(self) -> Path:
        return self.path / REPORT

    def save_report(self, report: dict) -> None:
        write_json(self.path / REPORT, report)


def list_work_dirs(root: Path | None = None) -> list[dict]:
    """Every tuning work directory with its trial count and the last run's latencies."""
    rows = []
    for d in sorted((root or TUNING).glob("*/")):
        work, report = WorkDir(d), WorkDir(d).report()
        rows.append({"work_dir": str(d), "trials": work.measured_trials(),
                     "tuned_ms": report.get("tuned", {}).get("median_ms"),
                     "untuned_ms": report.get("untuned", {}).get("median_ms"),
                     "emulated": report.get("emulated")})
    return rows
