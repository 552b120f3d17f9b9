"""``make tune`` / ``ppmseg tune``: tune PP-MobileSeg's kernels for a device through its
tracker, build the untuned and tuned libraries, check they agree, measure both, report.

Stages (each a function below): connect the device, extract tasks, time every task
untuned on the device, pick the tasks worth tuning, tune them with MetaSchedule
(resumable JSON database in the work directory), build both libraries, check, measure.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.artifact import BuildSpec, sha256_file, write_artifact
from pipeline.graph import compose, effective_upsample
from pipeline.tvm_log import quiet_tvm

ROOT = Path(__file__).resolve().parents[1]
# Every kernel of the network is tuned: the first round gives each of Tiny's ~110 tasks a
# batch of 8, the rest goes where MetaSchedule's gradient says.
DEFAULT_TRIALS = 1600
# The ablation's own kernels (interpolate + argmax) get a budget of their own, so that the
# comparison with VIM does not take trials from the network.
DEFAULT_ABLATION_TRIALS = 64
LOCK_FILE = "tune.lock"
# How long tuning waits for a server with the device's key to come back before it stops.
DEVICE_WAIT = float(os.environ.get("PPMSEG_DEVICE_WAIT", 300))


@dataclass(frozen=True)
class TuneRequest:
    model: str = "tiny"
    device: str = "host"
    trials: int = DEFAULT_TRIALS
    ablation_trials: int = DEFAULT_ABLATION_TRIALS
    input_size: tuple[int, int] = (512, 512)
    tracker: str | None = None  # host:port of the user's tracker; None: local (emulated) devices
    threads: int | None = None  # default: the device profile's
    weights: Path | None = None
    upsample: str = "vim"
    device_wait: float = DEVICE_WAIT  # seconds to wait for a lost device before stopping

    @property
    def tag(self) -> str:
        return f"{self.model}-{self.device}-{self.input_size[0]}x{self.input_size[1]}"


@dataclass
class Device:
    """A device reachable for this run: its build settings and tracker."""

    name: str
    key: str
    emulated: bool
    target: dict
    linker: str
    fcompile: Callable | None
    tracker: tuple[str, int]
    threads: int
    servers: int = 1
    started: list[str] = field(default_factory=list)  # local RPC processes this run started

    def available(self) -> bool:
        """A server with the device's key is registered with the tracker."""
        from rpc import servers

        try:
            queue = servers.devices(self.tracker).get(self.key)
        except Exception:  # noqa: BLE001 - an unreachable tracker offers no device either
            return False
        return queue is not None and queue.total > 0

    def tvm_target(self):  # noqa: ANN201
        import tvm

        return tvm.target.Target(self.target)


def connect_device(req: TuneRequest, log: Callable[[str], None]) -> Device:
    """Build settings for ``req.device`` and a tracker serving it: the user's (TRACKER)
    or the local one with servers started here (the emulator for phones)."""
    from rpc import servers
    from rpc.devices import load_profile
    from rpc.linkers import build_config

    profile = load_profile(req.device)
    cfg = build_config(profile, tracker=req.tracker)
    threads = req.threads or profile.threads
    target = {**cfg.target, "num-cores": threads}
    if cfg.mode == "device":
        address = servers.tracker_address(req.tracker)
        queue = servers.devices(address).get(cfg.tracker_key)  # one tracker round trip
        count = queue.total if queue is not None else 0
    else:
        if cfg.emulated:
            log(f"note: no TRACKER given; {profile.name} is EMULATED here (qemu): its timings measure the "
                "emulator, not a phone")
        running = {st.name for st in servers.status() if st.alive}
        recs = servers.start_servers(profile, threads=threads)
        queue = servers.devices().get(cfg.tracker_key)
        # Restart servers that run another thread count (measurements must use the device's)
        # or that the tracker no longer lists (a server whose session crashed).
        stale = [r.name for r in recs if r.threads != threads or queue is None or queue.total < len(recs)]
        if stale:
            for name in stale:
                servers.stop(name)
            recs = servers.start_servers(profile, threads=threads)
        address, count = servers.tracker_address(), len(recs)
        started = sorted({st.name for st in servers.status() if st.alive} - running, key=lambda n: n == "tracker")
        return Device(profile.name, cfg.tracker_key, cfg.emulated, target, cfg.linker, cfg.fcompile, address,
                      threads, max(count, 1), started)
    return Device(profile.name, cfg.tracker_key, cfg.emulated, target, cfg.linker, cfg.fcompile, address, threads,
                  max(count, 1))


def export_for(linker: str, mod, path: str) -> None:  # noqa: ANN001
    from rpc.linkers import fcompile_for

    with quiet_tvm():
        mod.export_library(path, fcompile=fcompile_for(linker))


def _builder_export(linker: str, mod) -> str:  # noqa: ANN001
    """MetaSchedule builder hook (runs in its worker processes): export with the device's linker."""
    import tempfile

    path = str(Path(tempfile.mkdtemp(prefix="ppmseg-ms-")) / "candidate.so")
    export_for(linker, mod, path)
    return path


def _random_args(args: list[tuple[tuple[int, ...], str]], rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.standard_normal(s).astype(d) if d.startswith("float") else np.zeros(s, d) for s, d in args]


def time_tasks(device: Device, tasks: list, work_dir: Path | None, tmp: Path, number: int = 3,
               repeat: int = 3) -> dict[str, float]:
    """Median ms of each task's kernel on the device (default schedules, or the
    database's best with ``work_dir``), all kernels in one uploaded library."""
    import tvm

    from rpc.session import connect
    from schedules.tuning import task_library

    target = device.tvm_target()
    lib, kernels = task_library(tasks, target, work_dir)
    path = tmp / ("tasks-tuned.so" if work_dir else "tasks-untuned.so")
    with quiet_tvm():
        executable = tvm.compile(lib, target=target)
    export_for(device.linker, executable, str(path))
    rng = np.random.default_rng(0)
    out = {}
    with connect(device.key, device.tracker) as session:
        session.set_threads(device.threads)
        name = session.upload(path)
        remote_lib = session.remote.load_module(name)
        dev = session.remote.cpu()
        for k in kernels:
            args = [tvm.runtime.tensor(a, dev) for a in _random_args(k.args, rng)]
            f = remote_lib.time_evaluator(k.name, dev, number=number, repeat=repeat)
            out[k.task] = float(np.median(f(*args).results)) * 1e3
    return out


@dataclass
class TuneResult:
    artifact: Path
    report: dict = field(default_factory=dict)


def _load_json(path: Path, default):  # noqa: ANN001, ANN202
    """``default`` for a missing or unreadable file (it is recomputed, never trusted)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def _write_json(path: Path, data) -> None:  # noqa: ANN001 - any JSON value
    """Atomically: a run killed while writing leaves the previous file or none."""
    from pipeline.files import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


def _timing(session, lib: Path, x: np.ndarray, repeat: int, number: int) -> tuple[dict, np.ndarray]:  # noqa: ANN001
    """Load ``lib`` in the session, run it once (labels back), then time ``main``."""
    session.load(lib)
    labels = session.run(x)[0]
    t = session.benchmark(x, repeat=repeat, number=number)
    ms_ = np.asarray(t.repeats_ms)
    return ({"median_ms": float(np.median(ms_)), "p10_ms": float(np.percentile(ms_, 10)),
             "p90_ms": float(np.percentile(ms_, 90)), "repeats": len(ms_), "number": number,
             "threads": t.threads}, labels)


def run_tune(req: TuneRequest, log: Callable[[str], None] = print, work_root: Path | None = None,
             out_root: Path | None = None, repeat: int = 10,
             on_start: Callable[[], None] = lambda: None) -> TuneResult:
    """The whole job; returns the tuned artifact directory (with ``untuned/`` and the report).
    One run per work directory at a time (a lock the kernel drops if the holder dies); the
    local RPC processes it started are stopped when it ends, however it ends."""
    from pipeline.files import exclusive_lock
    from rpc import servers
    from schedules import tuning

    work_dir = (work_root or ROOT / "tuning") / req.tag
    out_dir = (out_root or ROOT / "build") / f"tuned-{req.tag}"
    with exclusive_lock(work_dir / LOCK_FILE, f"tuning work directory {work_dir}"):
        on_start()
        cut = tuning.repair_database(work_dir)
        if cut:
            log(f"dropped a half-written database line ({cut} bytes) left by an interrupted run")
        device = connect_device(req, log)
        try:
            with _handling(_interrupt, signal.SIGTERM):
                return _tune_and_report(req, device, work_dir, out_dir, log, repeat)
        except KeyboardInterrupt:
            log(f"interrupted: {work_dir} keeps its {tuning.measured_trials(work_dir)} records; "
                "run the same command again to resume")
            raise
        finally:
            for name in device.started:
                servers.stop(name)


@contextlib.contextmanager
def _handling(handler: Callable, *signals: signal.Signals) -> Iterator[None]:
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


def _interrupt(_signum: int, _frame) -> None:  # noqa: ANN001
    """``kill PID`` stops a run as cleanly as Ctrl-C does (servers stopped, database whole)."""
    raise KeyboardInterrupt


def _request_stop(stop: threading.Event) -> Callable:
    """While MetaSchedule's C++ scheduler runs, SIGINT and SIGTERM only set ``stop``: the runner
    raises at its next batch, where the scheduler unwinds cleanly (a KeyboardInterrupt raised at
    an arbitrary point in there crashed the process). A second signal interrupts at once."""
    def request(_signum: int, _frame) -> None:  # noqa: ANN001
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    return request


def _tune_and_report(req: TuneRequest, device: Device, work_dir: Path, out_dir: Path, log: Callable[[str], None],
                     repeat: int) -> TuneResult:
    import torch
    from tvm.s_tir import meta_schedule as ms

    from model.image import sample_image_path
    from model.summary import summarize
    from model.weights import load_model
    from pipeline.compile import import_network
    from pipeline.inputs import load_input
    from pipeline.remote import agreement, host_reference
    from pipeline.report import write_report
    from rpc.devices import load_profile
    from rpc.session import connect
    from schedules import tuning

    t_start = time.perf_counter()
    target = device.tvm_target()
    model = load_model(req.model, req.weights)
    upsample = effective_upsample(req.upsample, model.cfg.num_classes)
    shape = (1, 3, *req.input_size)
    with quiet_tvm():
        network = import_network(model, shape, "torch", work_dir / "model.onnx")
        mod = compose(network, shape, upsample)
        # The ablation's plain tail is tuned too, so that VIM is compared with its best rival.
        ablation_mod = compose(network, shape, "interpolate") if upsample == "vim" else None
        network_tasks = tuning.extract_tasks(mod, target)
        # Compared by workload: a kernel both modules have gets a different name in each.
        known = {tuning.workload_key(t) for t in network_tasks}
        ablation_tasks = [t for t in (tuning.extract_tasks(ablation_mod, target) if ablation_mod else [])
                          if tuning.workload_key(t) not in known]
        tasks = network_tasks + ablation_tasks
    log(f"{len(tasks)} tasks in PP-MobileSeg-{req.model} {req.input_size[0]}x{req.input_size[1]} for {device.name}"
        f"{' (emulated)' if device.emulated else ''}, {device.threads} thread(s)")

    untuned_path = work_dir / "untuned_tasks.json"
    untuned = _load_json(untuned_path, {})
    if set(untuned) != {t.task_name for t in tasks}:
        log("timing every task's default schedule on the device")
        untuned = time_tasks(device, tasks, None, work_dir)
        _write_json(untuned_path, untuned)
    phases = [("network", network_tasks, req.trials), ("ablation", ablation_tasks, req.ablation_trials)]
    before = tuning.measured_trials(work_dir)
    if before:
        log(f"resuming {work_dir}: {before} trials already measured")
    done = tuning.trials_per_task(tasks, work_dir)
    builder = tuning.PooledBuilder(functools.partial(_builder_export, device.linker))
    rpc_runner = ms.runner.RPCRunner(
        ms.runner.RPCConfig(tracker_host=device.tracker[0], tracker_port=device.tracker[1],
                            tracker_key=device.key, session_timeout_sec=120 if device.emulated else 30),
        ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=0 if device.emulated else 50),
        max_workers=device.servers,
    )
    stop = threading.Event()
    progress = _ProgressPrinter(log, t_start)
    runner = tuning.DeviceWatchRunner(rpc_runner, device.available, req.device_wait, on_wait=log,
                                      stopping=stop.is_set, on_batch=progress.on_batch)
    try:
        with quiet_tvm(), _handling(_request_stop(stop), signal.SIGINT, signal.SIGTERM):
            for phase, group, trials in phases:
                measured = sum(done[t.task_name] for t in group)
                budget = max(trials - measured, 0)
                if group and budget:
                    log(f"tuning the {len(group)} {phase} tasks: {budget} trials"
                        + (f" ({measured} of {trials} measured before)" if measured else ""))
                    progress.start(budget)
                    tuning.tune(group, work_dir, budget, builder=builder, runner=runner, on_update=progress.on_update)
    except BaseException as e:
        runner.abort()
        if stop.is_set():
            raise KeyboardInterrupt from e
        if not runner.lost:
            raise
        raise tuning.DeviceLost(
            f"device {device.name} lost: no server with key {device.key!r} came back within {req.device_wait:.0f} s; "
            f"{work_dir} keeps its {tuning.measured_trials(work_dir)} records; run the same command again to resume"
        ) from None
    builder.close()
    trials = tuning.measured_trials(work_dir)
    per_task = tuning.trials_per_task(tasks, work_dir)
    log(f"{trials} trials in the database ({trials - before} new)")

    # Both libraries (and the ablation's), as artifacts for the device.
    spec = BuildSpec(model=req.model, num_classes=model.cfg.num_classes, input_size=req.input_size,
                     upsample=upsample, frontend="torch", device=device.name, target=device.target,
                     weights_sha256=sha256_file(req.weights) if req.weights else None,
                     mean=model.cfg.mean, std=model.cfg.std)
    extra = {"mode": "local" if req.tracker is None else "device", "emulated": device.emulated,
             "linker": device.linker, "threads": device.threads,
             "weights": str(Path(req.weights).resolve()) if req.weights else None}
    with quiet_tvm():
        builds = {"untuned": tuning.build(mod, target), "tuned": tuning.build(mod, target, work_dir)}
        if ablation_mod is not None:
            builds["tuned-interpolate"] = tuning.build(ablation_mod, target, work_dir)
    dirs = {"tuned": out_dir, "untuned": out_dir / "untuned", "tuned-interpolate": out_dir / "interpolate"}
    metas = {}
    for name, ex in builds.items():
        tuned = name != "untuned"
        s = spec if name != "tuned-interpolate" else BuildSpec(**{**spec.__dict__, "upsample": "interpolate"})
        metas[name] = write_artifact(dirs[name], s, functools.partial(export_for, device.linker, ex),
                                     {**extra, "tuned": tuned, "database": str(work_dir) if tuned else None,
                                      "trials": trials if tuned else 0})

    # Check and measure on the device, with a real photograph.
    x = load_input(sample_image_path(), model.cfg.mean, model.cfg.std, req.input_size).tensor.numpy()
    with torch.inference_mode():
        k_present = int(torch.unique(model(torch.from_numpy(x)).argmax(1)).numel())
    timings, labels = {}, {}
    with connect(device.key, device.tracker) as session:
        session.set_threads(device.threads)
        for name in builds:
            log(f"measuring the {name} library on {device.name}")
            timings[name], labels[name] = _timing(session, dirs[name] / "model.so", x, repeat,
                                                  number=1 if device.emulated else 3)
    ref, margin = host_reference({**metas["tuned"], "weights": extra["weights"]}, x)
    checks = {
        "tuned_vs_untuned": agreement(labels["tuned"], labels["untuned"], margin).__dict__,
        "untuned_vs_pytorch": agreement(labels["untuned"], ref, margin).__dict__,
    }
    if checks["tuned_vs_untuned"]["differ_outside_ties"]:
        raise RuntimeError(f"the tuned library's labels differ from the untuned one's at "
                           f"{checks['tuned_vs_untuned']['differ_outside_ties']} pixels outside ties")
    tuned_tasks = time_tasks(device, tasks, work_dir, work_dir)
    log("profiling the network part by part (untuned and tuned)")
    parts = profile_parts(device, model, x, req.input_size, upsample, work_dir)
    gflop = summarize(model, req.input_size).gflops
    peak = None if device.emulated else load_profile(device.name).peak_gflops(device.threads)

    report = {
        "model": req.model, "device": device.name, "emulated": device.emulated, "threads": device.threads,
        "input_size": list(req.input_size), "upsample": upsample, "trials": trials, "new_trials": trials - before,
        "target": device.target, "work_dir": str(work_dir), "artifact": str(out_dir),
        "date": time.strftime("%Y-%m-%d %H:%M"), "elapsed_s": round(time.perf_counter() - t_start, 1),
        "command": f"make tune DEVICE={device.name} MODEL={req.model} TRIALS={req.trials} "
                   f"ABLATION_TRIALS={req.ablation_trials} "
                   f"INPUT={req.input_size[0]}x{req.input_size[1]}",
        "untuned": timings["untuned"], "tuned": timings["tuned"],
        "speedup": timings["untuned"]["median_ms"] / timings["tuned"]["median_ms"],
        "checks": checks,
        "tasks": [{"task": t.task_name, "calls": int(t.weight), "flops": float(_flops(t)),
                   "untuned_ms": untuned[t.task_name], "tuned_ms": tuned_tasks[t.task_name],
                   "trials": per_task[t.task_name], "tuned": per_task[t.task_name] > 0,
                   "ablation_only": i >= len(network_tasks)} for i, t in enumerate(tasks)],
        "profile": parts,
        "gflops": {"network_gflop": gflop, "tuned_gflops": gflop / timings["tuned"]["median_ms"] * 1e3,
                   "untuned_gflops": gflop / timings["untuned"]["median_ms"] * 1e3, "peak_gflops": peak},
        "ablation": {"k": k_present, "classes": model.cfg.num_classes,
                     "vim_ms": timings["tuned"]["median_ms"],
                     "interpolate_ms": timings.get("tuned-interpolate", {}).get("median_ms")},
    }
    write_report(out_dir, report)
    _write_json(work_dir / "report.json", report)
    log(f"untuned {report['untuned']['median_ms']:.1f} ms, tuned {report['tuned']['median_ms']:.1f} ms "
        f"({report['speedup']:.2f}x) on {device.name}{' (EMULATED)' if device.emulated else ''}")
    return TuneResult(out_dir, report)


def profile_parts(device: Device, model, x: np.ndarray, input_size: tuple[int, int], upsample: str,  # noqa: ANN001
                  work_dir: Path, number: int = 3, repeat: int = 5) -> list[dict]:
    """Median ms of each part of the network (``pipeline/profile.py``) on the device, in the
    untuned build and with ``work_dir``'s database; with VIM, the interpolate tail too."""
    from pipeline import profile
    from pipeline.prepare import fold_batchnorm
    from rpc.session import connect
    from schedules import tuning

    folded = fold_batchnorm(model)
    inputs = profile.part_inputs(folded, x)
    tails = {"tail": upsample, **({"tail_interpolate": "interpolate"} if upsample == "vim" else {})}
    labels = {p.name: p.label for p in profile.network_parts(folded)}
    labels.update(tail=f"{upsample} tail" if upsample == "vim" else "interpolate + argmax tail",
                  tail_interpolate="interpolate + argmax tail (ablation)")
    names = [p.name for p in profile.network_parts(folded) if p.module is not None] + list(tails)
    with quiet_tvm():
        mod = profile.profiling_module(folded, inputs, input_size, tails)
    times = {}
    with connect(device.key, device.tracker) as session:
        session.set_threads(device.threads)
        for build, database in (("untuned", None), ("tuned", work_dir)):
            path = work_dir / f"profile-{build}.so"
            with quiet_tvm():
                export_for(device.linker, tuning.build(mod, device.tvm_target(), database), str(path))
            session.load(path)
            times[build] = profile.time_parts(
                lambda f, args: session.benchmark(args, f, number=1 if device.emulated else number,
                                                  repeat=repeat).median_ms, names, inputs)
    return [{"part": n, "label": labels[n], "untuned_ms": times["untuned"][n], "tuned_ms": times["tuned"][n]}
            for n in names]


def _flops(task) -> float:  # noqa: ANN001
    from tvm.s_tir.analysis import estimate_tir_flops

    return estimate_tir_flops(task.dispatched[0])


def list_work_dirs(work_root: Path | None = None) -> list[dict]:
    """Every tuning work directory with its trial count and best measured latency."""
    from schedules import tuning

    rows = []
    for d in sorted((work_root or ROOT / "tuning").glob("*/")):
        report = _load_json(d / "report.json", {})
        rows.append({"work_dir": str(d), "trials": tuning.measured_trials(d),
                     "tuned_ms": report.get("tuned", {}).get("median_ms"),
                     "untuned_ms": report.get("untuned", {}).get("median_ms"),
                     "emulated": report.get("emulated")})
    return rows


class _ProgressPrinter:
    """A progress line when a count moved, at most every 5 s (and at the end). Candidates
    are counted when sent to the device as well as when measured, because MetaSchedule
    reports the measurements of its first round (one batch per task) only after the round."""

    def __init__(self, log: Callable[[str], None], t0: float) -> None:
        self.log, self.t0 = log, t0
        self.start(0)

    def start(self, budget: int) -> None:
        """A new tuning call (phase) with its own budget."""
        self.budget, self.sent, self.progress, self.last = budget, 0, None, (0.0, (-1, -1))

    def on_batch(self, candidates: int) -> None:
        self.sent += candidates
        self._show()

    def on_update(self, progress) -> None:  # noqa: ANN001 - schedules.tuning.TuneProgress
        self.progress = progress
        self._show()

    def _show(self) -> None:
        now = time.perf_counter()
        p = self.progress
        measured = p.trials if p else 0
        counts = (self.sent, measured)
        if counts == self.last[1] or (now - self.last[0] < 5 and measured < self.budget):
            return
        self.last = (now, counts)
        best = sum((p.best_ms or {}).values()) if p else 0.0
        tasks = f"{len(p.best_ms or {})}/{p.tasks}" if p else "0"
        self.log(f"  trials sent {min(self.sent, self.budget)}/{self.budget}  measured {measured}  tasks measured "
                 f"{tasks}  errors {p.errors if p else 0}  best-kernels sum {best:.1f} ms  "
                 f"elapsed {now - self.t0:.0f} s")
