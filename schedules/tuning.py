"""MetaSchedule tuning of a Relax module's kernels, and builds with or without the
resulting database.

Both builds go through the same preparation (library dispatch, legalization,
fusion), so the tuned functions' structural hashes match the database keys, and
the untuned build is exactly ``tvm.compile``'s default CPU pipeline.
Hand-scheduled kernels (``schedules/vim.py``) are never tuned or replaced.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import tvm
import tvm_ffi
from tvm import relax
from tvm.ir.utils import derived_object
from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.analysis import estimate_tir_flops
from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

from schedules.ledger import TimedCostModel, TimedFuture, TimeLedger
from schedules.vim import HAND_SCHEDULED

if TYPE_CHECKING:
    from schedules.warm import Prior

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
FAILED_RUN_SECS = 1e9  # MetaSchedule records a failed run as 1e10 s


# The CPU pipeline's stages, as tvm.compile's default uses them (0.27's backend
# package does not re-export dataflow_lower_passes, so take the module itself).
def prepare_passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    return cpu_pipeline.library_dispatch_passes(target) + cpu_pipeline.legalize_passes(target)


def lower_passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    return cpu_pipeline.dataflow_lower_passes(target) + cpu_pipeline.finalize_passes(target)


# Legalization runs TOPI's computes, which enter te.TagScope: one slot for the whole process,
# which raises "nested op_tag" when a second thread enters it. Builds run in threads
# (pipeline.compile.build.in_parallel), so this step takes turns; the rest runs at once.
_LEGALIZING = threading.Lock()


def build(mod: tvm.IRModule, target: tvm.target.Target, work_dir: str | Path | None = None) -> relax.VMExecutable:
    """Compile ``mod``; with ``work_dir``, every kernel found in its MetaSchedule
    database gets its best measured schedule (the rest keep the default lowering)."""
    if work_dir is not None:
        check_target(work_dir, target)

    @tvm.transform.module_pass(opt_level=0)
    def pipeline(m: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with target:
            with _LEGALIZING:
                m = tvm.transform.Sequential(prepare_passes(target))(m)
            database = [] if work_dir is None else [relax.transform.MetaScheduleApplyDatabase(str(work_dir))]
            return tvm.transform.Sequential([*database, *lower_passes(target)])(m)

    return tvm.compile(mod, target=target, relax_pipeline=pipeline)


def extract_tasks(mod: tvm.IRModule, target: tvm.target.Target) -> list[ms.ExtractedTask]:
    """The tunable kernels of ``mod`` after preparation: hand-scheduled and
    dynamic-shape ones left out."""
    with target:
        prepared = tvm.transform.Sequential(prepare_passes(target))(mod)
    tasks = ms.relax_integration.extract_tasks(prepared, target)
    return [t for t in tasks if not _hand_scheduled(t) and _static(t)]


def _static(task: ms.ExtractedTask) -> bool:
    """Kernels over the symbolic K (VIM's bookkeeping) have no fixed shape to tune for."""
    try:
        ms.arg_info.ArgInfo.from_prim_func(task.dispatched[0]["main"])
    except TypeError:  # a symbolic dimension cannot become a static TensorInfo
        return False
    return True


def _hand_scheduled(task: ms.ExtractedTask) -> bool:
    funcs = [f for f in task.dispatched[0].functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    return any(f.attrs is not None and f.attrs.get(HAND_SCHEDULED, False) for f in funcs)


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def measured_trials(work_dir: str | Path) -> int:
    """Tuning records in a work directory's database (one per measured candidate)."""
    return len(_lines(Path(work_dir) / RECORDS))


def database_at(work_dir: str | Path, records: int, dest: str | Path) -> Path:
    """``work_dir``'s database as it stood after its first ``records`` records (MetaSchedule
    appends them in the order measured), written to ``dest``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(work_dir) / WORKLOADS, dest / WORKLOADS)
    (dest / RECORDS).write_text("".join(f"{line}\n" for line in _lines(Path(work_dir) / RECORDS)[:records]))
    return dest


def database_digest(work_dir: str | Path) -> str | None:
    """SHA-256 over a work directory's database files, None when it has no database."""
    paths = [Path(work_dir) / name for name in (WORKLOADS, RECORDS)]
    if not all(p.is_file() and p.stat().st_size for p in paths):
        return None
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


# What makes a schedule measured on one target wrong for another: the CPU (vector width,
# caches), the triple and the thread count. MetaSchedule's database applies a workload's
# best record whatever target it was measured on, so a work directory copied from another
# machine would build silently with kernels tuned for that one.
_TARGET_KEYS = ("kind", "mtriple", "mcpu", "mattr", "num-cores")


def _target_line(target: dict) -> str:
    return " ".join([str(target.get("kind"))] + [f"-{k}={_plain(target[k])}" for k in _TARGET_KEYS[1:] if k in target])


def _plain(value: object) -> str:
    """A target attribute as text; lists (``mattr``: a JSON list, or TVM's own array) joined by commas."""
    return str(value) if isinstance(value, (str, int)) else ",".join(map(str, value))


def _targets(work_dir: str | Path) -> dict[str, dict]:
    """Each target a work directory's records were measured for: its one-line form
    (``llvm -mtriple=... -mcpu=... -num-cores=N``) to TVM's JSON dict; a half-written last line
    is skipped."""
    lines = (json.loads(line) for line in _lines(Path(work_dir) / RECORDS) if _parses(line))
    return {_target_line(r[1][2]): r[1][2] for r in lines}


def record_targets(work_dir: str | Path) -> set[str]:
    """The targets a work directory's records were measured for, one line each."""
    return set(_targets(work_dir))


def record_target(work_dir: str | Path) -> dict:
    """The one target a work directory's records were measured for, as TVM's JSON dict
    (ValueError without records, or with records of several targets)."""
    targets = _targets(work_dir)
    if len(targets) != 1:
        raise ValueError(f"{work_dir} holds records of {len(targets)} targets, not one")
    return next(iter(targets.values()))


def check_target(work_dir: str | Path, target: tvm.target.Target) -> None:
    """Refuse a database measured for another target than ``target`` (ValueError)."""
    wanted = _target_line(dict(target.export()))
    others = sorted(record_targets(work_dir) - {wanted})
    if others:
        raise ValueError(f"{work_dir} holds kernels tuned for {'; '.join(others)}, not for {wanted} "
                         "(another machine's database?): tune again under another --work-root, "
                         "or move that directory aside")


def repair_database(work_dir: str | Path) -> int:
    """Cut a half-written last line off the database files (a run killed while MetaSchedule
    appended to them), which would otherwise stop the database from loading; every
    complete record stays. Returns the bytes cut."""
    cut = 0
    for name in (WORKLOADS, RECORDS):
        path = Path(work_dir) / name
        if not path.is_file():
            continue
        data = path.read_bytes()
        keep = len(data)
        while keep:
            start = data.rfind(b"\n", 0, keep - 1) + 1
            line = data[start:keep]
            if line.endswith(b"\n") and _parses(line):
                break
            keep = start  # unterminated or garbled: the interrupted append
        if keep < len(data):
            os.truncate(path, keep)
            cut += len(data) - keep
    return cut


def _parses(line: str | bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def workload_key(task: ms.ExtractedTask) -> str:
    """How MetaSchedule's database knows a task: the structural hash of its module."""
    return str(tvm_ffi.structural_hash(task.dispatched[0]))


def records(work_dir: str | Path) -> Iterator[tuple[str, float | None, object]]:
    """(workload key, mean measured seconds or None for a failed run, trace JSON) of every
    record, in the order they were measured. A record line is ``[workload index, [trace,
    run_secs, ...]]``."""
    work_dir = Path(work_dir)
    workloads = [json.loads(line)[0] for line in _lines(work_dir / WORKLOADS)]
    for line in _lines(work_dir / RECORDS):
        index, (trace, run_secs, *_rest) = json.loads(line)
        secs = [float(s) for s in run_secs or []]
        ok = bool(secs) and max(secs) < FAILED_RUN_SECS
        yield workloads[index], (sum(secs) / len(secs) if ok else None), trace


def trials_per_task(tasks: list[ms.ExtractedTask], work_dir: str | Path) -> dict[str, int]:
    """Database records per task, counted by workload key, so the count survives runs that
    were killed before reporting."""
    counts = Counter(key for key, _secs, _trace in records(work_dir))
    return {t.task_name: counts.get(workload_key(t), 0) for t in tasks}


def best_ms(tasks: list[ms.ExtractedTask], work_dir: str | Path) -> dict[str, float]:
    """Each measured task's best latency in the database (ms per call)."""
    best: dict[str, float] = {}
    for key, secs, _trace in records(work_dir):
        if secs is not None:
            best[key] = min(best.get(key, float("inf")), secs * 1e3)
    return {t.task_name: best[workload_key(t)] for t in tasks if workload_key(t) in best}


def tuning_curve(tasks: list[ms.ExtractedTask], work_dir: str | Path, start_ms: dict[str, float],
                 points: int = 40) -> list[tuple[int, float]]:
    """The best-kernels sum (ms per inference: each task's best latency so far times its calls)
    against the number of records, in the order measured; ``start_ms`` gives each task's time
    before its first successful record (its default schedule). About ``points`` points."""
    keys = {workload_key(t): t for t in tasks}
    current = {t.task_name: start_ms[t.task_name] for t in tasks}
    measured = list(records(work_dir))
    step = max(1, len(measured) // points)
    curve = [(0, _weighted_sum(tasks, current))]
    for i, (key, secs, _trace) in enumerate(measured, 1):
        task = keys.get(key)
        if task is not None and secs is not None:
            current[task.task_name] = min(current[task.task_name], secs * 1e3)
        if i % step == 0 or i == len(measured):
            curve.append((i, _weighted_sum(tasks, current)))
    return curve


def _weighted_sum(tasks: list[ms.ExtractedTask], per_call_ms: dict[str, float]) -> float:
    return sum(per_call_ms[t.task_name] * int(t.weight) for t in tasks)


@dataclass
class TuneProgress:
    """What the progress callback reports after every measured batch."""

    tasks: int
    task_names: list[str]
    calls: dict[str, int] = field(default_factory=dict)  # how often the network calls each task's kernel
    trials: int = 0
    errors: int = 0
    best_ms: dict[str, float] | None = None  # per call, the best this tuning call measured

    def best_kernels_ms(self) -> float:
        """Calls x best latency over the tasks measured so far (the report's best-kernels sum
        for them)."""
        return sum(ms * self.calls.get(name, 1) for name, ms in (self.best_ms or {}).items())


@derived_object
class ProgressCallback(ms.measure_callback.PyMeasureCallback):
    """Counts measured candidates and keeps each task's best latency for a display."""

    def __init__(self, progress: TuneProgress, on_update: Callable[[TuneProgress], None]) -> None:
        self.progress = progress
        self.on_update = on_update

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:  # noqa: ANN001
        p = self.progress
        name = p.task_names[task_id]
        best = (p.best_ms or {}).get(name, float("inf"))
        for b, r in zip(builder_results, runner_results, strict=True):
            p.trials += 1
            if b.error_msg is not None or r.error_msg is not None or not r.run_secs:
                p.errors += 1
                continue
            secs = [float(s) for s in r.run_secs]
            best = min(best, 1e3 * sum(secs) / len(secs))
        if best < float("inf"):
            p.best_ms = {**(p.best_ms or {}), name: best}
        self.on_update(p)


class DeviceLost(RuntimeError):
    """No server for the device's key came back within the allowed wait."""


class TuningInterrupted(RuntimeError):
    """The user asked the run to stop (raised between batches, where MetaSchedule unwinds cleanly)."""


@derived_object
class DeviceWatchRunner(ms.runner.PyRunner):
    """Runs each batch through ``runner`` once ``available()`` says a server for the device
    is registered, polling for at most ``wait_s`` seconds. Candidates measured while a
    server dies fail and are recorded as failed runs; a batch that finds no server
    waits for one to come back, and gives up (``lost`` set, DeviceLost raised) after
    ``wait_s``, leaving the database as it is."""

    def __init__(self, runner: ms.runner.Runner, available: Callable[[], bool], wait_s: float,
                 on_wait: Callable[[str], None] = lambda _m: None, poll_s: float = 1.0,
                 stopping: Callable[[], bool] = lambda: False,
                 on_batch: Callable[[int], None] = lambda _n: None, ledger: TimeLedger | None = None) -> None:
        self.runner = runner
        self.ledger = ledger or TimeLedger()  # the wait for each batch's results is the device's time
        self.available = available
        self.wait_s = wait_s
        self.on_wait = on_wait
        self.poll_s = poll_s
        self.stopping = stopping  # checked before each batch and while waiting
        self.on_batch = on_batch  # told how many candidates each batch sends
        self._pending: list[ms.runner.RunnerFuture] = []
        self._finished = 0
        self.lost = False

    def _check_stop(self) -> None:
        if self.stopping():
            raise TuningInterrupted("interrupted")

    def run(self, runner_inputs: list[ms.runner.RunnerInput]) -> list[ms.runner.RunnerFuture]:
        deadline = time.monotonic() + self.wait_s
        self._check_stop()
        if not self.available():
            self.on_wait(f"no server for the device; waiting up to {self.wait_s:.0f} s for one to come back")
            while not self.available():
                self._check_stop()
                if time.monotonic() > deadline:
                    self.lost = True
                    raise DeviceLost(f"no server came back within {self.wait_s:.0f} s")
                time.sleep(self.poll_s)
            self.on_wait("a server is back; tuning continues")
        self.on_batch(len(runner_inputs))
        futures = self.runner.run(runner_inputs)
        self._pending += futures
        return [TimedFuture(f, self.ledger) for f in futures]

    def measured(self) -> int:
        """Candidates whose measurement has ended. Polled, because MetaSchedule gathers a
        batch's results only when its scheduler returns to that task (a first round: after it)."""
        still = [f for f in self._pending if not f.done()]
        self._finished += len(self._pending) - len(still)
        self._pending = still
        return self._finished

    def abort(self) -> None:
        """Drop the measurements not started yet and kill the worker processes, so that a run
        that stops early exits at once (a queued RPCRunner job would otherwise start a new
        worker that retries a tracker that is gone, for a minute per job). TVM 0.27's pool has
        no public way to drop queued jobs, and its shutdown deadlocks on a pipe that a worker
        thread still reads, so its thread pool is closed directly."""
        threads = getattr(getattr(self.runner, "pool", None), "_threadpool", None)
        if threads is not None:
            threads.shutdown(wait=False, cancel_futures=True)
        kill_workers()


def kill_workers() -> None:
    """Kill this process's TVM pool workers (the builder's and the runner's)."""
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if "tvm.exec.popen_worker" in child.cmdline():
                child.kill()


def _build_candidate(export: Callable, mod: tvm.IRModule, target: tvm.target.Target) -> str:
    """MetaSchedule's ``default_build`` without its import of every tensor intrinsic TVM
    has (CUDA, ROCm, Hexagon...): 30 s in each new worker here, for a candidate whose
    schedule is already applied. Float32 CPU kernels use none of them."""
    return export(tvm.compile(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target))


@derived_object
class PooledBuilder(ms.builder.PyBuilder):
    """MetaSchedule's LocalBuilder, but with worker processes that outlive a batch.
    LocalBuilder starts a new pool for every batch, and a new worker took about 19 s to
    build its first candidate here (its import of TVM's tensor intrinsics, see
    ``_build_candidate``) against 0.1 s for the next ones, so building was most of the
    tuning time. Workers are still replaced after ``uses`` candidates, against the worker
    memory growth that made LocalBuilder restart its pool."""

    def __init__(self, export: Callable, workers: int = 2, timeout_s: float = 60, uses: int = 100,
                 ledger: TimeLedger | None = None) -> None:
        self.export = export  # module -> path of the exported library
        self.timeout_s = timeout_s
        self.pool = PopenPoolExecutor(max_workers=workers, timeout=timeout_s, maximum_process_uses=uses)
        self.ledger = ledger or TimeLedger()

    def build(self, build_inputs: list[ms.builder.BuilderInput]) -> list[ms.builder.BuilderResult]:
        with self.ledger.timing("build"):
            results = self._build(build_inputs)
        self.ledger.build_batches += 1
        self.ledger.candidates += len(build_inputs)
        return results

    def _build(self, build_inputs: list[ms.builder.BuilderInput]) -> list[ms.builder.BuilderResult]:
        jobs = [(self.export, b.mod, b.target) for b in build_inputs]
        results = []
        for r in self.pool.map_with_error_catching(lambda job: _build_candidate(*job), jobs):
            if r.status == StatusKind.COMPLETE:
                results.append(ms.builder.BuilderResult(r.value, None))
            elif r.status == StatusKind.TIMEOUT:
                results.append(ms.builder.BuilderResult(None, f"build timed out after {self.timeout_s:.0f} s"))
            else:
                results.append(ms.builder.BuilderResult(None, f"build failed: {r.value}"))
        return results

    def close(self) -> None:
        self.pool.shutdown(wait=False)


def _drop_unnamed_log_handlers() -> None:
    """MetaSchedule rebuilds its logging config from the names of its logger's handlers
    and fails on an unnamed one (seen on a second tuning run in one process, under
    pytest); such a handler cannot be referenced by that config anyway."""
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    for handler in list(logger.handlers):
        if handler.get_name() is None:
            logger.removeHandler(handler)


def trials_per_round(budget: int, tasks: int) -> int:
    """Candidates per task per round. MetaSchedule's task scheduler first gives every
    task one round in order; sized so that warm-up takes about half the budget, the
    rest going where the gradient says, within MetaSchedule's usual 8..64."""
    return max(1, min(budget, max(8, min(64, budget // max(2 * tasks, 1)))))


def tune(
    tasks: list[ms.ExtractedTask],
    work_dir: str | Path,
    max_trials: int,
    *,
    builder: ms.builder.Builder,
    runner: ms.runner.Runner,
    on_update: Callable[[TuneProgress], None] = lambda _p: None,
    seed: int = 0,
    ledger: TimeLedger | None = None,
    prior: Prior | None = None,
    evolution: tuple[int, int] = (512, 4),
) -> TuneProgress:
    """Tune ``tasks`` for at most ``max_trials`` new measurements, appending to the JSON
    database in ``work_dir`` (MetaSchedule's own format and logs); the call's wall time and
    its cost model's go into ``ledger`` (the builder's and the runner's keep their own).
    With ``prior`` (stored records of the tasks), the cost model is trained on them first.
    ``evolution``: the evolutionary search's population and generations per round
    (MetaSchedule's defaults, 512 and 4)."""
    work_dir = str(work_dir)
    _drop_unnamed_log_handlers()
    # MetaSchedule's logs go to work_dir/logs. Its console handler takes the level its logger
    # has when tuning starts, and tuning leaves that logger at DEBUG, so without this every
    # call after the first would print all of them.
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    strategy = ms.search_strategy.EvolutionarySearch(population_size=evolution[0], genetic_num_iters=evolution[1])
    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(tasks, work_dir, strategy=strategy,
                                                                              seed=seed)
    progress = TuneProgress(tasks=len(contexts), task_names=[c.task_name for c in contexts],
                            calls={c.task_name: int(w) for c, w in zip(contexts, weights, strict=True)})
    if max_trials <= 0 or not contexts:
        return progress
    callbacks = [*ms.measure_callback.MeasureCallback.create("default"), ProgressCallback(progress, on_update)]
    ledger = ledger or TimeLedger()
    cost_model = TimedCostModel(ms.cost_model.XGBModel(), ledger)
    if prior is not None:
        from schedules.warm import train  # warm builds on this module

        with ledger.timing("wall"):
            train(cost_model, contexts, tasks, prior)
    with ledger.timing("wall"):
        ms.tune_tasks(
            tasks=contexts, task_weights=weights, work_dir=work_dir, max_trials_global=max_trials,
            num_trials_per_iter=trials_per_round(max_trials, len(contexts)), builder=builder, runner=runner,
            database=ms.database.JSONDatabase(work_dir=work_dir),
            cost_model=cost_model, measure_callbacks=callbacks,
        )
    return progress


@dataclass(frozen=True)
class TaskKernel:
    """One task's kernel as a standalone function of a per-task timing library."""

    name: str  # the function's name in the library ("task_<i>")
    task: str  # MetaSchedule's task name
    weight: int  # how often the network calls it
    flops: float
    args: list[tuple[tuple[int, ...], str]]  # (shape, dtype) of each buffer argument
    tuned: bool  # a database schedule was applied


def best_modules(tasks: list[ms.ExtractedTask], target: tvm.target.Target,
                 work_dir: str | Path) -> list[tvm.IRModule | None]:
    """Each task's kernel with ``work_dir``'s best schedule applied (None: no record)."""
    database = ms.database.JSONDatabase(work_dir=str(work_dir))
    with target:
        return [database.query_ir_module(task.dispatched[0], target, "main") for task in tasks]


def task_library(tasks: list[ms.ExtractedTask], target: tvm.target.Target,
                 work_dir: str | Path | None = None) -> tuple[tvm.IRModule, list[TaskKernel]]:
    """Every task's kernel in one TIR module, so one build and one upload time them
    all on a device: with the default lowering, or with ``work_dir``'s best schedules."""
    best = best_modules(tasks, target, work_dir) if work_dir is not None else [None] * len(tasks)
    funcs, kernels = {}, []
    for i, (task, tuned) in enumerate(zip(tasks, best, strict=True)):
        mod = task.dispatched[0]
        func = (tuned or mod)["main"]
        name = f"task_{i}"
        funcs[name] = func.with_attr("global_symbol", name)
        args = [(tuple(int(d) for d in a.shape), str(a.dtype)) for a in ms.arg_info.ArgInfo.from_prim_func(mod["main"])]
        kernels.append(TaskKernel(name, task.task_name, int(task.weight), float(estimate_tir_flops(mod)), args,
                                  tuned is not None))
    return tvm.IRModule(funcs), kernels
