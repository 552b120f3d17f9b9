"""``make bench`` (``ppmseg bench-peers``): PP-MobileSeg against its peers on this machine,
side by side in one run: PyTorch eager, ONNX Runtime, Paddle Inference (the official PaddleSeg
model), OpenVINO, MNN, LiteRT, ExecuTorch, ncnn, TVM untuned and TVM tuned, same input (the
sample photograph), same thread count, in two columns: the network to its logits (every
engine) and the VIM label map (the engines that can express VIM).

Stages: (1) every engine prepares what it ships (state dict, ONNX file, Paddle inference
model, TVM library, ...), each in a process of its own, under its environment's Python
(``pipeline.bench.envs``); (2) one long-lived worker process per engine and column loads
that, runs it once (its result is compared with PyTorch's) and warms up; (3) the workers
are timed in rounds, A B C D E A B C D E ..., so that drift of a shared machine hits all of
them alike; (4) peak resident memory of each worker; (5) per-kernel profiles of tuned TVM,
ONNX Runtime and each column's fastest other engine; results as JSON, Markdown and a bar
chart (``pipeline.bench.report``). Every wait on a worker has a timeout; workers are killed
on any error or Ctrl-C; a failing engine becomes one error line and a row with its error,
and the run exits 1 after writing what it measured.
"""

from __future__ import annotations

import json
import math
import os
import select
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.bench.engines import ENGINES, TUNED, column
from pipeline.bench.envs import EnvError, ensure_env
from pipeline.bench.machine import machine_info, results_dir
from pipeline.common.paths import BENCH_WORK, REF_PYTHON, REFERENCE, ROOT, TUNING, relative
from pipeline.compile.passes import GraphOptions
from pipeline.tune.job import DEFAULT_SEARCH, TuneRequest
from pipeline.tune.workdir import WorkDir

REFERENCE_ENGINE = "torch"  # label maps are compared with PyTorch eager's
RATIO_BASE = "onnxruntime"
# Per-kernel profiles explain the gap between these two (the main target).
PROFILED = ("tvm-tuned", "onnxruntime")  # and the fastest other engine of each column
PROFILE_RUNS = 5


class EngineError(RuntimeError):
    """An engine that failed: the message is one line."""


@dataclass
class Settings:
    model: str = "tiny"
    threads: int = 1
    repeat: int = 30  # timed runs per engine
    rounds: int = 10
    # Pause before each engine's batch: OpenMP and ONNX Runtime pools spin-wait after work
    # (Intel OpenMP for 200 ms by default), which steals a core from the next engine.
    settle_s: float = 0.5
    input_size: tuple[int, int] = (512, 512)
    out: Path = field(default_factory=results_dir)
    work: Path = BENCH_WORK
    checkpoint: Path | None = None  # default: .cache/reference/<model>.pdparams
    ref_python: Path = REF_PYTHON
    tuning_root: Path = TUNING
    paddle_backend: str = "onednn"
    engines: tuple[str, ...] = tuple(ENGINES)
    outputs: tuple[str, ...] = ("labels", "logits")  # the two columns; an engine runs those it offers
    command: str = ""
    prepare_timeout: float = 3600.0  # a TVM build of Base takes minutes on 2 cores
    load_timeout: float = 600.0
    warmup: int = 3

    def tune_request(self, engine: str = "tvm-tuned") -> TuneRequest:
        """The ``make tune DEVICE=host`` run whose database the tuned engine reads: this model,
        size and thread count, and the engine's graph options and search."""
        tuned = TUNED[engine]
        return TuneRequest(model=self.model, input_size=self.input_size, threads=self.threads,
                           graph=GraphOptions(**tuned.get("graph", {})),
                           search=tuned.get("search", DEFAULT_SEARCH))

    def tuning(self, engine: str = "tvm-tuned") -> WorkDir:
        """That run's work directory."""
        return self.tune_request(engine).work_dir(self.threads, self.tuning_root)


class Worker:
    """One engine process speaking ``pipeline.bench.worker``'s JSON-line protocol."""

    def __init__(self, engine: str, python: Path, mode: str, spec: dict, env: dict, log: Path) -> None:
        self.engine, self.log = engine, log
        module = ENGINES[engine].module
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                [str(python), "-m", "pipeline.bench.worker", mode, module, json.dumps(spec)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, cwd=ROOT, env=env)
        self._buffer = b""

    def _last_log_line(self) -> str:
        try:
            lines = [line for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return ""
        return lines[-1].strip()[:300] if lines else ""

    def reply(self, timeout: float) -> dict:
        """The next reply line, within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise EngineError(f"no answer within {timeout:.0f} s (killed; log {self.log})")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    try:
                        code = self.proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        self.kill()
                        code = "?"
                    raise EngineError(f"worker exited with code {code}: {self._last_log_line()} (log {self.log})")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            self.kill()
            raise EngineError(f"garbled reply {line[:80]!r} (log {self.log})") from None
        if not msg.get("ok"):
            self.kill()
            raise EngineError(msg.get("error", "unknown error"))
        return msg

    def request(self, command: dict, timeout: float) -> dict:
        try:
            self.proc.stdin.write((json.dumps(command) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise EngineError(f"worker is gone: {self._last_log_line()} (log {self.log})") from None
        return self.reply(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def close(self, timeout: float = 10.0) -> None:
        """Ask it to quit; kill it if it does not within ``timeout``."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b'{"cmd": "quit"}\n')
                self.proc.stdin.close()
                self.proc.wait(timeout=timeout)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()


def worker_env(threads: int) -> dict:
    """Thread counts for every library's pool, and the repository on the import path
    (the Paddle worker runs another interpreter)."""
    n = str(threads)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n,
            "TVM_NUM_THREADS": n, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def engine_spec(engine: str, s: Settings, work: Path, output: str = "labels") -> dict:
    spec = {"model": s.model, "input_size": list(s.input_size), "threads": s.threads,
            "checkpoint": str(s.checkpoint), "artifact_dir": str(work / engine), "warmup": s.warmup,
            "input_path": str(work / "input.npy"), "output": output,
            "result_path": str(work / f"{output}-{engine}.npy")}
    if engine == "paddle":
        spec["backend"] = s.paddle_backend
    if engine in TUNED:
        spec["tuning_dir"] = str(s.tuning(engine).path)
        spec["graph"] = TUNED[engine].get("graph", {})
    return spec


def tuned_database_note(s: Settings, engine: str) -> str | None:
    """Why a tuned engine is not measured (no database), else None."""
    work = s.tuning(engine)
    if work.database_digest() is None:
        return (f"not measured: no MetaSchedule database in {relative(work.path)} "
                f"(`{s.tune_request(engine).command(s.threads)}` creates it)")
    return None


def write_input(s: Settings, path: Path) -> dict:
    """The sample photograph preprocessed as the pipeline does (PaddleSeg's eval transforms)."""
    from model.image import sample_image_path
    from model.pp_mobileseg import get_config
    from pipeline.common.inputs import load_input

    cfg = get_config(s.model)
    image = sample_image_path()
    x = load_input(image, cfg.mean, cfg.std, s.input_size).tensor.numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, x)
    return {"image": f"{image.name} (scikit-image sample photograph)", "size": list(s.input_size),
            "preprocessing": "PaddleSeg ADE20K eval transforms (pipeline.common.inputs.load_input), bilinear resize "
                             f"to {s.input_size[0]}x{s.input_size[1]}, ImageNet mean/std",
            "num_classes": cfg.num_classes}


def _size_mb(directory: Path, files: list[str]) -> float:
    return sum((directory / f).stat().st_size for f in files) / 1e6


def run_bench(s: Settings, log: Callable[[str], None] = print) -> dict:
    """Prepare, load, time in rounds, measure memory; returns the results (see ``pipeline.bench.report``)."""
    work = s.work / s.tuning().path.name
    per_round = max(1, math.ceil(s.repeat / max(s.rounds, 1)))
    rounds = math.ceil(s.repeat / per_round)
    results = {"model": s.model, "input_size": list(s.input_size), "threads": s.threads,
               "date": time.strftime("%Y-%m-%d"), "time": time.strftime("%H:%M:%S"), "command": s.command,
               "machine": machine_info(), "repeat": s.repeat, "rounds": rounds,
               "settle_s": s.settle_s, "outputs": list(s.outputs)}
    results["input"] = write_input(s, work / "input.npy")
    run = _Run(s, work, log)
    finished = False
    try:
        jobs = run.load(run.prepare())
        _compare(run.rows, work, jobs)
        times = run.time_rounds(jobs, per_round, rounds)
        run.memory(jobs, times)
        results["profiles"] = run.profiles(jobs, "labels")
        results["logits_profiles"] = run.profiles(jobs, "logits", also=by_speed(run.rows, jobs, "labels")[:1])
        finished = True
    finally:  # on an error or Ctrl-C, kill at once; else let the workers quit
        for w in run.started:
            w.close() if finished else w.kill()
    for output in ("labels", "logits"):
        base = run.rows.get(RATIO_BASE, {}).get(column(output, "median_ms"))
        for row in run.rows.values():
            ms = row.get(column(output, "median_ms"))
            row[column(output, "ratio_to_onnxruntime")] = ms / base if base and ms else None
    for row in run.rows.values():
        if row["size_mb"] is not None:
            row["size_mb"] = round(row["size_mb"], 3)
    results["machine"]["load_avg_end"] = list(os.getloadavg())
    results["rows"] = list(run.rows.values())
    results["tuning"] = _tuning_summary(s)
    return results


Job = tuple[str, str]  # (engine, output)


def _empty_row(engine: str, s: Settings) -> dict:
    row = {"engine": engine, "threads": s.threads, "outputs": [o for o in ENGINES[engine].outputs if o in s.outputs],
           "size_mb": None, "settings": None, "agreement": None, "logits_max_abs_diff": None}
    for output in ("labels", "logits"):
        row.update({column(output, k): None for k in ("median_ms", "p90_ms", "peak_rss_mb")})
    if engine == "paddle":
        row["backend"] = s.paddle_backend
    return row


class _Run:
    """The stages of one benchmark run and the processes they started (``started``)."""

    def __init__(self, s: Settings, work: Path, log: Callable[[str], None]) -> None:
        self.s, self.work, self.log = s, work, log
        self.env = worker_env(s.threads)
        self.rows = {e: _empty_row(e, s) for e in s.engines}
        self.started: list[Worker] = []
        self.workers: dict[Job, Worker] = {}
        self.warm_ms: dict[Job, float] = {}
        self._pythons: dict[str, Path] = {}

    def fail(self, engine: str, err: Exception) -> None:
        self.rows[engine]["error"] = " ".join(str(err).split())
        self.log(f"error: {engine}: {self.rows[engine]['error']}")

    def python(self, engine: str) -> Path:
        """The engine's environment's Python, created on first use (``pipeline.bench.envs``)."""
        name = ENGINES[engine].env
        if name == "ref":  # the PaddleSeg environment is `make reference`'s, and may be given
            if not self.s.ref_python.is_file():
                raise EngineError(f"{self.s.ref_python} missing: `make reference` builds the PaddleSeg environment")
            return self.s.ref_python
        if name not in self._pythons:
            try:
                self._pythons[name] = ensure_env(name, self.log)
            except EnvError as e:
                raise EngineError(str(e)) from None
        return self._pythons[name]

    def launch(self, engine: str, mode: str, output: str, timeout: float) -> tuple[Worker, dict]:
        python = self.python(engine)
        name = engine if mode == "prepare" else f"{engine}-{output}"
        log_path = self.work / "logs" / f"{name}{'-prepare' if mode == 'prepare' else ''}.log"
        try:
            w = Worker(engine, python, mode, engine_spec(engine, self.s, self.work, output), self.env, log_path)
        except OSError as e:
            raise EngineError(f"cannot start {python}: {e}") from None
        self.started.append(w)
        return w, w.reply(timeout)

    def prepare(self) -> list[str]:
        """(1) Each engine writes what it ships, in a process of its own; the engines that did."""
        active = []
        for engine, row in self.rows.items():
            if engine in TUNED and (note := tuned_database_note(self.s, engine)):
                row["note"] = note
                self.log(f"{engine}: {note}")
                continue
            self.log(f"{engine}: preparing")
            t0 = time.perf_counter()
            try:
                w, info = self.launch(engine, "prepare", "labels", self.s.prepare_timeout)
            except EngineError as e:
                self.fail(engine, e)
                continue
            w.close()
            row.update(size_mb=_size_mb(self.work / engine, info["files"]), size_counts=info["counts"],
                       prepare_s=round(time.perf_counter() - t0, 1))
            if info.get("reused"):
                row["prepare_note"] = "build reused (nothing it depends on changed)"
            active.append(engine)
        return active

    def load(self, active: list[str]) -> list[Job]:
        """(2) One long-lived worker per engine and output: load, first run (saved), warm-up."""
        jobs = []
        for engine in active:
            for output in self.rows[engine]["outputs"]:
                self.log(f"{engine}: loading ({output})")
                try:
                    w, ready = self.launch(engine, "serve", output, self.s.load_timeout)
                except EngineError as e:
                    self.fail(engine, e)
                    jobs = [j for j in jobs if j[0] != engine]
                    break
                self.workers[(engine, output)] = w
                self.warm_ms[(engine, output)] = ready["warm_ms"]
                self.rows[engine][column(output, "load_rss_mb")] = round(ready["rss_mb"], 1)
                self.rows[engine]["settings"] = ready.get("settings") or self.rows[engine]["settings"]
                jobs.append((engine, output))
        return jobs

    def _drop(self, jobs: list[Job], engine: str, err: EngineError) -> None:
        self.fail(engine, err)
        jobs[:] = [j for j in jobs if j[0] != engine]

    def time_rounds(self, jobs: list[Job], per_round: int, rounds: int) -> dict[Job, list[float]]:
        """(3) Timed rounds, every engine and output alternating."""
        times: dict[Job, list[float]] = {j: [] for j in jobs}
        for r in range(rounds):
            for job in list(jobs):
                if job not in jobs:  # its engine failed earlier in this round
                    continue
                n = min(per_round, self.s.repeat - len(times[job]))
                time.sleep(self.s.settle_s)
                try:
                    reply = self.workers[job].request({"cmd": "time", "n": n}, 60 + 20 * n * self.warm_ms[job] / 1e3)
                except EngineError as e:
                    self._drop(jobs, job[0], e)
                    continue
                times[job] += reply["times_ms"]
            medians = ", ".join(f"{e} ({o}) {np.median(times[(e, o)]):.1f} ms" for e, o in jobs)
            self.log(f"after round {r + 1}, medians so far: {medians}")
        return times

    def memory(self, jobs: list[Job], times: dict[Job, list[float]]) -> None:
        """(4) Peak memory of each worker, and the timings into the rows."""
        for job in list(jobs):
            if job not in jobs:
                continue
            engine, output = job
            try:
                stats = self.workers[job].request({"cmd": "stats"}, 30)
            except EngineError as e:
                self._drop(jobs, engine, e)
                continue
            t = np.asarray(times[job])
            self.rows[engine].update({column(output, "median_ms"): float(np.median(t)),
                                      column(output, "p90_ms"): float(np.percentile(t, 90)),
                                      column(output, "peak_rss_mb"): round(stats["peak_rss_mb"], 1),
                                      column(output, "repeats"): len(t),
                                      column(output, "times_ms"): [round(v, 3) for v in t.tolist()]})

    def profiles(self, jobs: list[Job], output: str, also: list[str] = ()) -> dict[str, list[dict]]:
        """(5) Per-kernel profiles of ``output``'s column (after the memory readings: profiling
        builds a second session): tuned TVM, ONNX Runtime and the fastest other engine that has
        a profiler (LiteRT's wheel has none: then the next fastest), and ``also`` (the label-map
        column asks for that engine's logits profile, where its label-map runner has none:
        ``pipeline.bench.report._profile``)."""
        out: dict[str, list[dict]] = {}
        for engine in dict.fromkeys([*PROFILED, *also]):
            self._profile(jobs, engine, output, out)
        for engine in by_speed(self.rows, jobs, output):
            if engine in out or self._profile(jobs, engine, output, out):
                break
        return out

    def _profile(self, jobs: list[Job], engine: str, output: str, out: dict[str, list[dict]]) -> bool:
        """``engine``'s profile of ``output`` into ``out``; False when it has none."""
        job = (engine, output)
        if job not in jobs:
            return False
        try:
            reply = self.workers[job].request({"cmd": "profile", "n": PROFILE_RUNS},
                                              60 + 40 * PROFILE_RUNS * self.warm_ms[job] / 1e3)
        except EngineError as e:  # the timings stand; only the breakdown is missing
            self.log(f"warning: {engine} ({output}): no profile: {e}")
            return False
        if reply["profile"]:
            out[engine] = reply["profile"]
        return bool(reply["profile"])


def by_speed(rows: dict[str, dict], jobs: list[Job], output: str) -> list[str]:
    """The engines of ``output``'s column other than TVM's builds, fastest first."""
    key = column(output, "median_ms")
    return sorted((e for e, o in jobs if o == output and not e.startswith("tvm") and rows[e][key]),
                  key=lambda e: rows[e][key])


def _compare(rows: dict[str, dict], work: Path, jobs: list[Job]) -> None:
    """Against PyTorch eager's results: the percentage of pixels with its label, the largest
    absolute difference from its logits."""
    for output in ("labels", "logits"):
        ref_path = work / f"{output}-{REFERENCE_ENGINE}.npy"
        if (REFERENCE_ENGINE, output) not in jobs or not ref_path.is_file():
            continue
        ref = np.load(ref_path)
        if output == "labels":
            rows[REFERENCE_ENGINE]["classes_in_labels"] = int(np.unique(ref).size)
        for engine in [e for e, o in jobs if o == output]:
            got = np.load(work / f"{output}-{engine}.npy")
            if got.shape != ref.shape:
                rows[engine][f"{output}_shape_note"] = f"{output} shape {list(got.shape)}, PyTorch's {list(ref.shape)}"
                rows[engine][column(output, "agreement" if output == "labels" else "max_abs_diff")] = None
            elif output == "labels":
                rows[engine]["agreement"] = float(np.mean(got == ref) * 100.0)
            else:
                rows[engine]["logits_max_abs_diff"] = float(np.max(np.abs(got.astype(np.float64) - ref)))


def _tuning_summary(s: Settings) -> dict | None:
    """What the tuning report says about the tuned kernels (for the targets' discussion)."""
    work = s.tuning()
    report = work.report()
    if not report:
        return None
    tasks = report.get("tasks", [])
    return {"report": relative(work.report_path), "threads": report.get("threads"), "trials": report.get("trials"),
            "date": report.get("date"), "tuned_median_ms": report.get("tuned", {}).get("median_ms"),
            "tasks": len(tasks), "tasks_tuned": sum(1 for t in tasks if t.get("tuned")),
            # per task: calls, untuned and tuned ms as `make tune` measured them, trials spent
            "task_trials": {t["task"]: {k: t.get(k) for k in ("calls", "untuned_ms", "tuned_ms", "trials", "tuned")}
                            for t in tasks}}


def check_device(device: str) -> None:
    """The peer benchmark runs on this machine only: emulated timings are not comparable."""
    if device == "host":
        return
    from rpc.devices import load_profile

    emulated = load_profile(device).emulation is not None  # an unknown device: DeviceError
    why = ("is emulated on this machine (qemu): emulated timings are not comparable with native ones"
           if emulated else "is not this machine")
    raise ValueError(f"DEVICE={device} {why}; the peer benchmark runs on DEVICE=host only")


def default_checkpoint(model: str) -> Path:
    """The random reference checkpoint every engine loads (``make reference`` writes it)."""
    path = REFERENCE / f"{model}.pdparams"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint (`make reference` writes it)")
    return path
