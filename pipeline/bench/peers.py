"""``make bench`` (``ppmseg bench-peers``): PP-MobileSeg against its peers on this machine,
side by side in one run: PyTorch eager, ONNX Runtime, Paddle Inference (the official PaddleSeg
model), TVM untuned and TVM tuned, same input (the sample photograph), same thread count,
label maps out.

Stages: (1) every engine prepares what it ships (state dict, ONNX file, Paddle inference
model, TVM library), each in a process of its own; (2) one long-lived worker process per
engine loads that, runs it once (its label map is compared with PyTorch's) and warms up;
(3) the workers are timed in rounds, A B C D E A B C D E ..., so that drift of a shared
machine hits all of them alike; (4) peak resident memory of each worker; (5) results as
JSON, Markdown and a bar chart (``pipeline.bench.report``). Every wait on a worker has a
timeout; workers are killed on any error or Ctrl-C; a failing engine becomes one error line
and a row with its error, and the run exits 1 after writing what it measured.
"""

from __future__ import annotations

import json
import math
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.bench.engines import ENGINES, TUNED
from pipeline.bench.machine import machine_info, results_dir
from pipeline.common.paths import BENCH_WORK, REF_PYTHON, REFERENCE, ROOT, TUNING, relative
from pipeline.compile.passes import GraphOptions
from pipeline.tune.job import DEFAULT_SEARCH, TuneRequest
from pipeline.tune.workdir import WorkDir

REFERENCE_ENGINE = "torch"  # label maps are compared with PyTorch eager's
RATIO_BASE = "onnxruntime"
# Per-kernel profiles explain the gap between these two (the main target).
PROFILED = ("tvm-tuned", "onnxruntime")
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
        module = ENGINES[engine][0]
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


def engine_spec(engine: str, s: Settings, work: Path) -> dict:
    spec = {"model": s.model, "input_size": list(s.input_size), "threads": s.threads,
            "checkpoint": str(s.checkpoint), "artifact_dir": str(work / engine), "warmup": s.warmup,
            "input_path": str(work / "input.npy"), "labels_path": str(work / f"labels-{engine}.npy")}
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
    env = worker_env(s.threads)
    per_round = max(1, math.ceil(s.repeat / max(s.rounds, 1)))
    rounds = math.ceil(s.repeat / per_round)
    results = {"model": s.model, "input_size": list(s.input_size), "threads": s.threads,
               "date": time.strftime("%Y-%m-%d"), "time": time.strftime("%H:%M:%S"), "command": s.command,
               "machine": machine_info(), "repeat": s.repeat, "rounds": rounds,
               "settle_s": s.settle_s}
    results["input"] = write_input(s, work / "input.npy")
    rows: dict[str, dict] = {e: {"engine": e, "threads": s.threads, "median_ms": None, "p90_ms": None,
                                 "peak_rss_mb": None, "agreement": None, "size_mb": None} for e in s.engines}
    rows.get("paddle", {}).update(backend=s.paddle_backend)

    def fail(engine: str, err: Exception) -> None:
        rows[engine]["error"] = " ".join(str(err).split())
        log(f"error: {engine}: {rows[engine]['error']}")

    # (1) prepare, one process per engine
    skipped = {e: note for e in rows if e in TUNED and (note := tuned_database_note(s, e))}
    for engine, note in skipped.items():
        rows[engine]["note"] = note
        log(f"{engine}: {note}")
    active = [e for e in s.engines if e not in skipped]
    if "paddle" in active and not s.ref_python.is_file():
        fail("paddle", EngineError(f"{s.ref_python} missing: `make reference` builds the PaddleSeg environment"))
        active.remove("paddle")
    started: list[Worker] = []  # every process started here, stopped in `finally` whatever happens
    finished = False
    workers: dict[str, Worker] = {}

    def launch(engine: str, mode: str, timeout: float) -> tuple[Worker, dict]:
        python = s.ref_python if ENGINES[engine][1] else Path(sys.executable)
        log_path = work / "logs" / f"{engine}{'-prepare' if mode == 'prepare' else ''}.log"
        try:
            w = Worker(engine, python, mode, engine_spec(engine, s, work), env, log_path)
        except OSError as e:
            raise EngineError(f"cannot start {python}: {e}") from None
        started.append(w)
        return w, w.reply(timeout)

    try:
        for engine in list(active):
            log(f"{engine}: preparing")
            t0 = time.perf_counter()
            try:
                w, info = launch(engine, "prepare", s.prepare_timeout)
            except EngineError as e:
                fail(engine, e)
                active.remove(engine)
                continue
            w.close()
            rows[engine].update(size_mb=_size_mb(work / engine, info["files"]), size_counts=info["counts"],
                                prepare_s=round(time.perf_counter() - t0, 1))
            if info.get("reused"):
                rows[engine]["prepare_note"] = "build reused (nothing it depends on changed)"

        # (2) one long-lived worker per engine: load, first run (labels), warm-up
        warm_ms: dict[str, float] = {}
        for engine in list(active):
            log(f"{engine}: loading")
            try:
                workers[engine], ready = launch(engine, "serve", s.load_timeout)
            except EngineError as e:
                fail(engine, e)
                active.remove(engine)
                continue
            warm_ms[engine] = ready["warm_ms"]
            rows[engine]["load_rss_mb"] = round(ready["rss_mb"], 1)
        _agreement(rows, work, active)

        # (3) timed rounds, engines alternating
        times: dict[str, list[float]] = {e: [] for e in active}
        for r in range(rounds):
            for engine in list(active):
                n = min(per_round, s.repeat - len(times[engine]))
                time.sleep(s.settle_s)
                try:
                    reply = workers[engine].request({"cmd": "time", "n": n}, 60 + 20 * n * warm_ms[engine] / 1e3)
                except EngineError as e:
                    fail(engine, e)
                    active.remove(engine)
                    continue
                times[engine] += reply["times_ms"]
            medians = ", ".join(f"{e} {np.median(times[e]):.1f} ms" for e in active)
            log(f"after round {r + 1}, medians so far: {medians}")

        # (4) peak memory, then stop
        for engine in list(active):
            try:
                stats = workers[engine].request({"cmd": "stats"}, 30)
            except EngineError as e:
                fail(engine, e)
                active.remove(engine)
                continue
            t = np.asarray(times[engine])
            rows[engine].update(median_ms=float(np.median(t)), p90_ms=float(np.percentile(t, 90)),
                                peak_rss_mb=round(stats["peak_rss_mb"], 1), repeats=len(t),
                                times_ms=[round(v, 3) for v in t.tolist()])

        # (5) per-kernel profiles (after the memory reading: profiling builds a second session)
        profiles = {}
        for engine in [e for e in PROFILED if e in active]:
            try:
                reply = workers[engine].request({"cmd": "profile", "n": PROFILE_RUNS},
                                                60 + 40 * PROFILE_RUNS * warm_ms[engine] / 1e3)
            except EngineError as e:  # the timings stand; only the breakdown is missing
                log(f"warning: {engine}: no profile: {e}")
                continue
            profiles[engine] = reply["profile"]
        results["profiles"] = profiles
        finished = True
    finally:  # on an error or Ctrl-C, kill at once; else let the workers quit
        for w in started:
            w.close() if finished else w.kill()

    base = rows.get(RATIO_BASE, {}).get("median_ms")
    for row in rows.values():
        row["ratio_to_onnxruntime"] = row["median_ms"] / base if base and row["median_ms"] else None
        if row["size_mb"] is not None:
            row["size_mb"] = round(row["size_mb"], 3)
    results["machine"]["load_avg_end"] = list(os.getloadavg())
    results["rows"] = list(rows.values())
    results["tuning"] = _tuning_summary(s)
    return results


def _agreement(rows: dict[str, dict], work: Path, active: list[str]) -> None:
    """Percentage of pixels whose label equals PyTorch eager's."""
    ref_path = work / f"labels-{REFERENCE_ENGINE}.npy"
    if REFERENCE_ENGINE not in active or not ref_path.is_file():
        return
    ref = np.load(ref_path)
    rows[REFERENCE_ENGINE]["classes_in_labels"] = int(np.unique(ref).size)
    for engine in active:
        labels = np.load(work / f"labels-{engine}.npy")
        rows[engine]["agreement"] = (float(np.mean(labels == ref) * 100.0) if labels.shape == ref.shape else 0.0)


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
