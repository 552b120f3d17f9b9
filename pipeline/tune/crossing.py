"""When a tuning run first held a library at least as fast as ONNX Runtime.

Only where the device is this machine (the host profile, locally): ONNX Runtime runs the
peer benchmark's export of the same network and label tail (``Run.peer``: the command line
gives ``pipeline.bench.engines.ort_engine.bound_run``, a stage this one does not import) in
this process, pinned to the cores of the device's server, at the device's thread count.
Libraries built from the database as it stood after N records (``tuning.database_at``) are
timed in turns with it, and a binary search over the tuning curve's points finds the first
one whose library is no slower. The search assumes a library does not get slower as the
database grows (each kernel's best only improves); noise can move the answer by a point,
so every probe is in the report."""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

ROUNDS = 10  # turns per comparison, one timed run of each library per turn, after a warm-up run
# Before each turn: right after one runtime's run the other ran slower for a few tenths of a
# second (Base at two threads, in turns with 0.05 s between them: ONNX Runtime 40 to 71 ms
# against 21 to 25 alone, TVM 19 to 25 against 12 to 16; with 0.3 s, 24 and 15).
SETTLE_S = 0.3


def onnxruntime_crossing(run, module, curve: dict, x: np.ndarray, untuned_ms: float,  # noqa: ANN001 - steps.Run, IRModule
                         tuned_library: Path, weights: str | None, before: int) -> dict:
    """``{"measured", "onnxruntime_ms", "records", "minutes", "probes"}``: ONNX Runtime's
    median, the first curve point (records in the database) whose library was at least as
    fast (None: not even the tuned library), how many minutes into this run the database
    first stood at or past it (None: records of an earlier run, ``before`` this one's), and
    each probe's two medians."""
    from rpc.devices import load_profile

    if run.device.config.mode != "local" or not load_profile(run.device.name).is_host:
        return {"measured": False, "why": "ONNX Runtime runs on this machine, and the device is not this machine"}
    if run.peer is None:
        return {"measured": False, "why": "no ONNX Runtime was given to this run (`ppmseg tune` gives it)"}
    points = [n for n, _ms in curve["best_kernels_ms"] if n > 0]
    if not points:
        return {"measured": False, "why": "the database holds no records"}
    run.log("timing ONNX Runtime against libraries built from the database as it stood earlier")
    with tempfile.TemporaryDirectory(prefix="crossing-") as tmp:
        probes, first = _search(run, module, x, untuned_ms, points, tuned_library, weights, Path(tmp))
    seconds = None
    if first is not None and first > before:
        seconds = next((s for n, s in curve.get("wall_s") or [] if n >= first), None)
    return {"measured": True, "threads": run.device.threads,
            "onnxruntime_ms": statistics.median(p["onnxruntime_ms"] for p in probes),
            "records": first, "minutes": None if seconds is None else seconds / 60,
            "probes": sorted(probes, key=lambda p: p["records"])}


def _search(run, module, x: np.ndarray, untuned_ms: float, points: list[int], tuned_library: Path,  # noqa: ANN001
            weights: str | None, tmp: Path) -> tuple[list[dict], int | None]:
    from rpc.session import connect

    probes: list[dict] = []
    with connect(run.device.key, run.device.tracker) as session:
        session.set_threads(run.device.threads)
        cores = session.pinned()
        with _pinned(cores):
            onnxruntime = run.peer(run.spec.model, weights, x, run.device.threads, tmp / "onnxruntime")

        def no_slower(records: int, library: Path) -> bool:
            session.load(library, slot="probe")
            tvm_ms, ort_ms = _turns(lambda: session.benchmark(x, number=1, repeat=1, slot="probe").median_ms,
                                    lambda: _timed(onnxruntime, cores))
            probes.append({"records": records, "tvm_ms": tvm_ms, "onnxruntime_ms": ort_ms})
            return tvm_ms <= ort_ms

        if not no_slower(points[-1], tuned_library):
            return probes, None
        if untuned_ms <= probes[0]["onnxruntime_ms"]:
            return probes, 0
        slower, faster = -1, len(points) - 1  # indices into points; -1 is the untuned library
        while faster - slower > 1:
            mid = (slower + faster) // 2
            if no_slower(points[mid], _library_at(run, module, points[mid], tmp)):
                faster = mid
            else:
                slower = mid
    return probes, points[faster]


def _library_at(run, module, records: int, tmp: Path) -> Path:  # noqa: ANN001
    """The shipped module built with the database's first ``records`` records."""
    from pipeline.compile.build import build_library, export
    from schedules.tuning import database_at

    database = database_at(run.work.path, records, tmp / f"database-{records}")
    path = tmp / f"model-{records}.so"
    export(build_library(module, run.spec.target, database), path, run.device.config.linker)
    return path


def _turns(tvm: Callable[[], float], onnxruntime: Callable[[], float]) -> tuple[float, float]:
    """Medians (ms) of ``ROUNDS`` turns, each timing one run of either (after ``SETTLE_S``), in
    alternating order."""
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(ROUNDS):
        for j in (0, 1) if i % 2 == 0 else (1, 0):
            time.sleep(SETTLE_S)
            times[j].append((tvm, onnxruntime)[j]())
    return statistics.median(times[0]), statistics.median(times[1])


def _timed(run: Callable[[], None], cores: list[int] | None) -> float:
    """One run after a warm-up run, as TVM's time evaluator times a library."""
    with _pinned(cores):
        run()
        t0 = time.perf_counter()
        run()
        return (time.perf_counter() - t0) * 1e3


@contextlib.contextmanager
def _pinned(cores: list[int] | None) -> Iterator[None]:
    """This thread on ``cores`` (the device's server's) for the block; threads it starts keep them."""
    if not cores:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
