"""A tuning run started from the records store (``schedules.store``): the stored schedules
of each task are re-measured on the device and committed to the run's database (a record is
a candidate until this device has timed it), and the search's cost model is trained on the
stored records before the first round, so that round is not a random sample. A kernel no file
has starts from its nearest sibling's records (the same kernel at other shapes,
``schedules.siblings``), replayed on its own shapes."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import tvm
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.utils import remove_build_dir
from tvm.s_tir.schedule import Trace

from schedules import siblings
from schedules.store import RecordFile
from schedules.tuning import trials_per_task, workload_key

REMEASURE = 2  # stored candidates re-measured per task: the closest file's fastest


@dataclass
class Prior:
    """The stored records of a run's tasks, each workload's from the closest file that has it,
    else from its nearest sibling (``schedules.siblings``) in the closest file that has one: of
    the same model, other spatial sizes only (another input size); else of another model, any
    shapes (the same layer of another variant: Base from Tiny's records, other channels)."""

    records: dict[str, list[tuple[object, float]]] = field(default_factory=dict)  # key -> [(trace, ms)]
    origin: dict[str, str] = field(default_factory=dict)  # key -> the file's name
    transferred: set[str] = field(default_factory=set)  # keys whose records are a sibling's

    @classmethod
    def gather(cls, files: list[RecordFile], tasks: list[ms.ExtractedTask], model: str) -> Prior:
        """``files`` closest first; ``model`` the run's."""
        prior, same_model = cls(), [f for f in files if f.source.get("model") == model]
        other_models = [f for f in files if f not in same_model]
        for task in tasks:
            key = workload_key(task)
            found = next((f for f in files if key in f.records), None)
            if found is not None:
                prior.records[key], prior.origin[key] = found.records[key], found.name
            elif (sibling := _sibling(task, [(same_model, siblings.SPATIAL), (other_models, None)])) is not None:
                prior.records[key], prior.origin[key] = sibling
                prior.transferred.add(key)
        return prior

    def for_task(self, task: ms.ExtractedTask) -> list[tuple[object, float]]:
        return self.records.get(workload_key(task), [])

    def served(self, tasks: list[ms.ExtractedTask], work_dir: str | Path) -> tuple[int, int]:
        """How many of ``tasks`` have records in ``work_dir``'s database after re-measuring (a
        stored trace that does not replay on its kernel serves nothing), and how many of those
        took a sibling's."""
        have = trials_per_task(tasks, work_dir)
        keys = [workload_key(t) for t in tasks if have[t.task_name]]
        return len(keys), sum(k in self.transferred for k in keys)


def _sibling(task: ms.ExtractedTask,
             searches: list[tuple[list[RecordFile], tuple[int, ...] | None]]) -> tuple[list, str] | None:
    """The records of ``task``'s nearest sibling, and its file's name: from the first search
    (files, closest first; the axes a sibling may differ in) whose files have one."""
    mod = task.dispatched[0]
    kin, shapes = siblings.family(mod), siblings.arg_shapes(mod)  # the TVMScript printed once per kernel
    for files, free in searches:
        for f in files:
            same = {k: info["shapes"] for k, info in f.kernels.items() if info["family"] == kin and k in f.records}
            if (key := siblings.closest(shapes, same, free)) is not None:
                return f.records[key], f.name
    return None


def candidate(task: ms.ExtractedTask, trace: object) -> ms.MeasureCandidate | None:
    """The task's kernel with a stored trace replayed on it (None: the trace no longer applies)."""
    mod = task.dispatched[0]
    sch = tvm.s_tir.Schedule(mod)
    try:
        Trace.apply_json_to_schedule(trace, sch)
    except Exception:  # noqa: BLE001 - TVM raises its own error types for a trace it cannot replay
        return None
    return ms.MeasureCandidate(sch, ms.arg_info.ArgInfo.from_prim_func(mod["main"]))


def remeasure(tasks: list[ms.ExtractedTask], prior: Prior, work_dir: str | Path, target: tvm.target.Target,
              builder: ms.builder.Builder, runner: ms.runner.Runner, per_task: int = REMEASURE) -> Counter:
    """Build and time, on the device, each task's first ``per_task`` stored candidates, and
    commit them with this device's times to ``work_dir``'s database. Tasks that already have
    records there (a resumed run) are left. Returns the records committed per store file."""
    database = ms.database.JSONDatabase(work_dir=str(work_dir))
    done = trials_per_task(tasks, work_dir)
    jobs = []  # (task, candidate)
    for task in tasks:
        if not done[task.task_name]:
            replayed = (candidate(task, trace) for trace, _ms in prior.for_task(task)[:per_task])
            jobs += [(task, c) for c in replayed if c is not None]
    built = builder.build([ms.builder.BuilderInput(c.sch.mod, target) for _t, c in jobs])
    ran = [(job, b) for job, b in zip(jobs, built, strict=True) if b.error_msg is None]
    futures = runner.run([ms.runner.RunnerInput(b.artifact_path, "cpu", c.args_info) for (_t, c), b in ran])
    committed = Counter()
    for ((task, cand), b), future in zip(ran, futures, strict=True):
        result = future.result()
        remove_build_dir(b.artifact_path)
        if result.error_msg is not None or not result.run_secs:
            continue
        workload = database.commit_workload(task.dispatched[0])
        database.commit_tuning_record(ms.database.TuningRecord(cand.sch.trace, workload, result.run_secs, target,
                                                               cand.args_info))
        committed[prior.origin[workload_key(task)]] += 1
    return committed


def train(model: ms.cost_model.CostModel, contexts: list[ms.TuneContext], tasks: list[ms.ExtractedTask],
          prior: Prior) -> None:
    """Train ``model`` on the stored records of each context's task, as if the search had
    measured them (the cost model ranks candidates within a task, by time relative to the
    task's best, so times from another CPU of the family still teach it)."""
    for context, task in zip(contexts, tasks, strict=True):
        pairs = [(candidate(task, trace), ms_) for trace, ms_ in prior.for_task(task)]
        pairs = [(c, ms_) for c, ms_ in pairs if c is not None]
        if pairs:
            results = [ms.runner.RunnerResult([ms_ / 1e3], None) for _c, ms_ in pairs]
            model.update(context, [c for c, _ms in pairs], results)
