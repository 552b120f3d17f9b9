"""The steps of a tuning run, in order: import the modules, extract the tasks, time them
untuned (cached), search with MetaSchedule, build the artifacts, check and measure them on
the device. ``pipeline.tune.job`` runs them; each takes the run's context."""

from __future__ import annotations

import functools
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.common.tvm_log import quiet_tvm
from pipeline.compile.artifact import BuildSpec, cached
from pipeline.compile.build import (
    ONNX_FILE,
    build_library,
    export,
    import_networks,
    in_parallel,
    with_tail,
    write_library,
)
from pipeline.tune.measure import measure_functions, measure_interleaved, time_tasks
from pipeline.tune.progress import ProgressPrinter
from pipeline.tune.signals import handling, request_stop
from pipeline.tune.workdir import WorkDir
from rpc.connect import Device
from schedules.ledger import TimeLedger

ABLATION_UPSAMPLE = "interpolate"
# The search's first phase gives every network kernel one round of this many candidates;
# the rest of the budget goes to the kernels holding this share of the tuned time.
FIRST_ROUND = 8
HEAVY_SHARE = 0.8
# The evolutionary search's (population, generations) per search: MetaSchedule's defaults but
# for ``light``, the plain search with a quarter of the population and half the generations.
EVOLUTION = {"plain": (512, 4), "focused": (512, 4), "light": (128, 2)}


@dataclass
class Run:
    """What every step of one tuning run shares."""

    device: Device
    work: WorkDir
    out_dir: Path
    model: object  # the PPMobileSeg being tuned
    spec: BuildSpec  # the shipped library's
    log: Callable[[str], None]
    device_wait: float
    t_start: float = field(default_factory=time.perf_counter)
    ledger: TimeLedger = field(default_factory=TimeLedger)  # where the search's time goes
    phases_s: dict[str, float] = field(default_factory=dict)  # wall time of each step, by name
    warm: dict | None = None  # the warm start's record (WorkDir.warm_start), None from scratch
    budget: int = 0  # the search's trial budget (the records it ends with)
    # ONNX Runtime for the report's comparison (``crossing.py``): (model, weights, input, threads,
    # directory) -> a run, bound in place; None leaves the comparison out
    peer: Callable[[str, str | None, np.ndarray, int, Path], Callable[[], None]] | None = None
    clock: list[list[float]] = field(default_factory=list)  # [records in the database, seconds into the run]

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the block's wall time to ``phases_s[name]``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.phases_s[name] = round(self.phases_s.get(name, 0.0) + time.perf_counter() - t0, 1)

    @property
    def ablation(self) -> bool:
        """VIM is compared with the best plain tail: upsample + argmax of every class, fused."""
        return self.spec.upsample == "vim"


def import_modules(run: Run) -> dict[str, object]:
    """The shipped module and, with VIM, the ablation's (the default size's network, plain
    tail); with several input sizes also ``default``, the default size's entry alone."""
    with quiet_tvm():
        networks = import_networks(run.model, run.spec, run.work.path / ONNX_FILE)
    network = networks[tuple(run.spec.input_size)]
    modules = {"main": with_tail(networks, run.spec)}
    if run.spec.other_sizes:
        modules["default"] = with_tail(network, run.spec)
    if run.ablation:
        modules["ablation"] = with_tail(network, run.spec, ABLATION_UPSAMPLE)
    return modules


def extract(run: Run, modules: dict[str, object]) -> list:
    """The shipped module's tunable kernels (MetaSchedule's ExtractedTasks). The ablation's
    module adds none: its plain tail is a hand-written kernel too."""
    from schedules import tuning

    with quiet_tvm():
        return tuning.extract_tasks(modules["main"], run.device.tvm_target())


def default_entry_tasks(run: Run, modules: dict[str, object], tasks: list) -> int:
    """How many of ``tasks`` the default input size alone has (all of them with one size):
    a library with several sizes gets a budget in proportion to its distinct kernels."""
    if "default" not in modules:
        return len(tasks)
    from schedules import tuning

    with quiet_tvm():
        return len(tuning.extract_tasks(modules["default"], run.device.tvm_target()))


def untuned_timings(run: Run, tasks: list) -> dict[str, float]:
    """Every task's default schedule timed on the device, cached in the work directory."""
    untuned = run.work.untuned_tasks()
    if set(untuned) != {t.task_name for t in tasks}:
        run.log("timing every task's default schedule on the device")
        untuned = time_tasks(run.device, tasks, None, run.work.library_path("tasks-untuned"))
        run.work.save_untuned_tasks(untuned)
    return untuned


def _runner(run: Run, stop: threading.Event, ledger: TimeLedger, on_batch: Callable[[int], None] = lambda _n: None):  # noqa: ANN202
    from tvm.s_tir import meta_schedule as ms

    from schedules import tuning

    device = run.device
    rpc_runner = ms.runner.RPCRunner(
        ms.runner.RPCConfig(tracker_host=device.tracker[0], tracker_port=device.tracker[1],
                            tracker_key=device.key, session_timeout_sec=120 if device.emulated else 30),
        ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=0 if device.emulated else 50),
        max_workers=device.servers,
    )
    return tuning.DeviceWatchRunner(rpc_runner, device.available, run.device_wait, on_wait=run.log,
                                    stopping=stop.is_set, on_batch=on_batch, ledger=ledger)


def _builder_export(linker: str, mod) -> str:  # noqa: ANN001
    """MetaSchedule builder hook (runs in its worker processes): export with the device's linker."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="ppmseg-ms-")) / "candidate.so"
    export(mod, path, linker)
    return str(path)


def _time(tasks: list, per_call_ms: dict[str, float]) -> dict[str, float]:
    return {t.task_name: per_call_ms[t.task_name] * int(t.weight) for t in tasks}


def by_time(tasks: list, per_call_ms: dict[str, float]) -> list:
    """The tasks, heaviest (per-call ms times calls) first."""
    time = _time(tasks, per_call_ms)
    return sorted(tasks, key=lambda t: -time[t.task_name])


def heaviest(tasks: list, per_call_ms: dict[str, float], share: float = HEAVY_SHARE) -> list:
    """The fewest tasks whose time (per-call ms times calls) makes up ``share`` of the total,
    heaviest first."""
    time = _time(tasks, per_call_ms)
    total, chosen, held = sum(time.values()), [], 0.0
    for t in by_time(tasks, per_call_ms):
        if chosen and held >= share * total:
            break
        chosen.append(t)
        held += time[t.task_name]
    return chosen


def owing_first_round(tasks: list, done: dict[str, int], per_call_ms: dict[str, float]) -> list:
    """The tasks with fewer than ``FIRST_ROUND`` records, heaviest first."""
    return [t for t in by_time(tasks, per_call_ms) if done[t.task_name] < FIRST_ROUND]


def phase_budgets(tasks: list, trials: int, done: dict[str, int]) -> tuple[int, int]:
    """New trials for the first round (``FIRST_ROUND`` candidates for each task that has
    fewer records) and for the heaviest kernels after it: what is left of ``trials`` once
    the database's records for ``tasks`` are counted, first round first."""
    left = max(trials - sum(done[t.task_name] for t in tasks), 0)
    first = min(left, FIRST_ROUND * sum(done[t.task_name] < FIRST_ROUND for t in tasks))
    return first, left - first


def reachable(group: list, budget: int) -> list:
    """The first tasks of ``group`` that ``budget`` gives a round of candidates: MetaSchedule
    prepares every task it is given (about 0.7 s each) before the first measurement, so a
    small budget is not spread over tasks it cannot reach."""
    from schedules import tuning

    return group[: math.ceil(budget / tuning.trials_per_round(budget, len(group)))] if budget else []


@dataclass(frozen=True)
class Phase:
    """One MetaSchedule call of the search."""

    kernels: str  # what the log calls the kernels it tunes
    budget: int
    group: Callable[[], list]  # chosen when the phase starts, after the earlier phases' records


def plan(how: str, tasks: list, trials: int, done: dict[str, int], untuned: dict[str, float],
         per_call_ms: Callable[[], dict[str, float]]) -> list[Phase]:
    """The phases of a search for ``trials`` records in all (those in the database count).
    ``focused``: a first round for the kernels that have not had theirs, heaviest first, then
    the kernels holding most of the tuned time. ``plain``: one call over every kernel,
    heaviest first."""
    first, rest = phase_budgets(tasks, trials, done)
    if how != "focused":
        return [Phase("kernels, MetaSchedule's task scheduler over all of them", first + rest,
                      lambda: by_time(tasks, per_call_ms()))]
    return [Phase("kernels without a first round (one round each)", first,
                  lambda: owing_first_round(tasks, done, untuned)),
            Phase("heaviest kernels", rest, lambda: heaviest(tasks, per_call_ms()))]


def search(run: Run, tasks: list, untuned: dict[str, float], trials: int, how: str, prior: object = None) -> None:
    """MetaSchedule, phase by phase as ``plan`` says, its cost model first trained on
    ``prior`` (``schedules.warm.Prior``) if given. Signals stop the search between batches;
    a device that does not come back stops it with DeviceLost."""
    from schedules import tuning

    builder = tuning.PooledBuilder(functools.partial(_builder_export, run.device.config.linker), ledger=run.ledger)
    stop = threading.Event()
    progress = ProgressPrinter(run.log, run.t_start)
    runner = _runner(run, stop, run.ledger, progress.on_batch)
    progress.follow(runner.measured)

    def per_call_ms() -> dict[str, float]:
        """Each task's best measured latency so far; its untuned one until it has a record."""
        return {**untuned, **tuning.best_ms(tasks, run.work.path)}

    try:
        with quiet_tvm(), handling(request_stop(stop), signal.SIGINT, signal.SIGTERM):
            for phase in plan(how, tasks, trials, run.work.trials_per_task(tasks), untuned, per_call_ms):
                group = reachable(phase.group(), phase.budget)
                if group:
                    run.log(f"tuning the {len(group)} {phase.kernels}: {phase.budget} trials")
                    progress.start(phase.budget)
                    tuning.tune(group, run.work.path, phase.budget, builder=builder, runner=runner,
                                on_update=_clocked(run, progress.on_update), ledger=run.ledger, prior=prior,
                                evolution=EVOLUTION[how])
    except BaseException as e:
        runner.abort()
        if stop.is_set():
            raise KeyboardInterrupt from e
        if not runner.lost:
            raise
        raise tuning.DeviceLost(
            f"device {run.device.name} lost: no server with key {run.device.key!r} came back within "
            f"{run.device_wait:.0f} s; {run.work.path} keeps its {run.work.measured_trials()} records; "
            "run the same command again to resume") from None
    builder.close()


def _clocked(run: Run, on_update: Callable) -> Callable:
    """``on_update``, also noting in ``run.clock`` when the database held how many records."""
    start = run.work.measured_trials()

    def update(progress) -> None:  # noqa: ANN001 - schedules.tuning.TuneProgress
        on_update(progress)
        run.clock.append([start + progress.trials, round(time.perf_counter() - run.t_start, 1)])

    return update


def warm_start(run: Run, tasks: list) -> object | None:
    """Begin from the records store (``schedules.store``): each task's closest stored
    schedules re-measured on the device into the work directory's database, which file they
    came from kept in ``warm_start.json`` (``Run.warm``). Returns the stored records for the
    search's cost model (``schedules.warm.Prior``); None when the store has none for these
    tasks on this target, or the work directory began from scratch."""
    from schedules import store, warm

    marker = run.work.warm_start()
    if marker is None and run.work.measured_trials():
        return None  # begun from scratch: resumed as such
    target = run.device.tvm_target()
    files = store.usable(target, run.spec.model)
    files = [f for f in files if marker is None or f.name in marker["files"]]
    prior = warm.Prior.gather(files, tasks, run.spec.model)
    if not prior.records:
        return None
    if marker is None or "remeasured" not in marker:
        names = sorted(set(prior.origin.values()))
        run.work.save_warm_start({"files": names})
        run.log(f"warm start: re-measuring the stored schedules of {len(prior.records)} of {len(tasks)} kernels "
                f"({len(prior.transferred)} from a sibling at other shapes; {', '.join(names)})")
        t0 = time.perf_counter()
        committed = _remeasure(run, tasks, prior, target)
        served, transferred = prior.served(tasks, run.work.path)
        marker = {"files": names, "tasks": served, "transferred": transferred,
                  "remeasured": run.work.measured_trials(),
                  "committed": dict(committed), "seconds": round(time.perf_counter() - t0, 1)}
        run.work.save_warm_start(marker)
        run.clock.append([marker["remeasured"], round(time.perf_counter() - run.t_start, 1)])
    run.warm = marker
    return prior


def _remeasure(run: Run, tasks: list, prior: object, target: object) -> dict[str, int]:
    from schedules import tuning, warm

    builder = tuning.PooledBuilder(functools.partial(_builder_export, run.device.config.linker))
    runner = _runner(run, threading.Event(), TimeLedger())
    try:
        with quiet_tvm():
            return warm.remeasure(tasks, prior, run.work.path, target, builder, runner)
    except BaseException:
        runner.abort()  # a queued measurement would otherwise outlive the run
        raise
    finally:
        builder.close()


@dataclass(frozen=True)
class Built:
    directory: Path
    meta: dict


def build_artifacts(run: Run, modules: dict[str, object], extra: dict) -> dict[str, Built]:
    """The untuned and tuned libraries (and the ablation's, tuned: its plain tail) as artifacts, by name;
    an untuned library an earlier run left with the same inputs is reused.
    The tuned one is the run's output directory."""
    builds = {"untuned": ("main", None, run.out_dir / "untuned"), "tuned": ("main", run.work.path, run.out_dir)}
    if "ablation" in modules:
        builds["tuned-interpolate"] = ("ablation", run.work.path, run.out_dir / "interpolate")
    trials = run.work.measured_trials()

    def build(module: str, database: Path | None, directory: Path) -> Built:
        spec = run.spec if module == "main" else BuildSpec(
            **{**run.spec.__dict__, "upsample": ABLATION_UPSAMPLE, "other_sizes": ()})  # the default size only
        if database is None and (meta := cached(directory, spec)) is not None:
            return Built(directory, meta)  # an earlier run's: same inputs, same code and TVM
        executable = build_library(modules[module], run.spec.target, database)
        return Built(directory, write_library(directory, spec, executable, run.device.config.linker, {
            **extra, "tuned": database is not None, "database": str(database) if database else None,
            "trials": trials if database else 0}))

    return in_parallel({name: functools.partial(build, *b) for name, b in builds.items()})


def measure(run: Run, built: dict[str, Built], x: np.ndarray, rounds: int) -> tuple[dict, dict, dict]:
    """Every artifact run once, then timed on the device interleaved (``measure_interleaved``)."""
    run.log(f"measuring the {', '.join(built)} libraries on {run.device.name}, interleaved ({rounds} rounds)")
    return measure_interleaved(run.device, {name: b.directory / "model.so" for name, b in built.items()}, x, rounds)


def measure_entries(run: Run, built: dict[str, Built], inputs: dict[str, np.ndarray], rounds: int,
                    weights: str | None) -> list[dict]:
    """A library of several sizes: each entry after the default, untuned against tuned,
    timed interleaved and checked as the default one is (``inputs``: each entry's ``main``
    function and its input)."""
    if not inputs:
        return []
    libraries = {name: built[name].directory / "model.so" for name in ("untuned", "tuned")}
    run.log(f"measuring {', '.join(inputs)} of the untuned and tuned libraries ({rounds} rounds)")
    timings, labels, _ = measure_functions(run.device, libraries, inputs, rounds)
    return [{"function": function, "input_size": list(x.shape[2:]), "rounds": rounds,
             "untuned_ms": timings[function]["untuned"]["median_ms"],
             "tuned_ms": timings[function]["tuned"]["median_ms"],
             "checks": check(built["tuned"].meta, labels[function], x, weights)}
            for function, x in inputs.items()]


def resident_memory(run: Run, built: dict[str, Built]) -> dict | None:
    """A host library of several sizes: its file size, and the resident memory of a fresh
    process running its default entry alone against every entry in turn
    (``pipeline.deploy.resident``). None for one size or another device."""
    from pipeline.compile.artifact import LIBRARY, entries
    from pipeline.deploy.resident import resident_mb

    if len(run.spec.sizes) == 1 or run.spec.device != "host":
        return None
    tuned = built["tuned"].directory
    mains = [e["main"] for e in entries(built["tuned"].meta)]
    run.log("measuring the resident memory of the default entry alone and of every entry in turn")
    return {"library_mb": round((tuned / LIBRARY).stat().st_size / 2**20, 1),
            "default_entry_mb": resident_mb(tuned, mains[:1]), "all_entries_mb": resident_mb(tuned, mains)}


def check(tuned_meta: dict, labels: dict[str, np.ndarray], x: np.ndarray, weights: str | None) -> dict:
    """Tuned against untuned labels (must agree outside ties) and untuned against PyTorch."""
    from pipeline.deploy.remote import agreement, host_reference

    ref, margin = host_reference({**tuned_meta, "weights": weights}, x)
    checks = {
        "tuned_vs_untuned": agreement(labels["tuned"], labels["untuned"], margin).__dict__,
        "untuned_vs_pytorch": agreement(labels["untuned"], ref, margin).__dict__,
    }
    if checks["tuned_vs_untuned"]["differ_outside_ties"]:
        raise RuntimeError(f"the tuned library's labels differ from the untuned one's at "
                           f"{checks['tuned_vs_untuned']['differ_outside_ties']} pixels outside ties")
    return checks
