"""Measuring on the tuning device: every task's kernel alone, and whole libraries timed against each other."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipeline.common.noise import rotations, spread
from pipeline.compile.build import export
from rpc.connect import Device


def _random_args(args: list[tuple[tuple[int, ...], str]], rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.standard_normal(s).astype(d) if d.startswith("float") else np.zeros(s, d) for s, d in args]


def time_tasks(device: Device, tasks: list, database: Path | None, library: Path, number: int = 3,
               repeat: int = 3) -> dict[str, float]:
    """Median ms of each task's kernel on the device (default schedules, or the
    database's best with ``database``), all kernels in one uploaded ``library``."""
    import tvm

    from pipeline.common.tvm_log import quiet_tvm
    from rpc.session import connect
    from schedules.tuning import task_library

    target = device.tvm_target()
    lib, kernels = task_library(tasks, target, database)
    with quiet_tvm():
        executable = tvm.compile(lib, target=target)
    export(executable, library, device.config.linker)
    rng = np.random.default_rng(0)
    out = {}
    with connect(device.key, device.tracker) as session:
        session.set_threads(device.threads)
        name = session.upload(library)
        remote_lib = session.remote.load_module(name)
        dev = session.remote.cpu()
        for k in kernels:
            args = [tvm.runtime.tensor(a, dev) for a in _random_args(k.args, rng)]
            f = remote_lib.time_evaluator(k.name, dev, number=number, repeat=repeat)
            out[k.task] = float(np.median(f(*args).results)) * 1e3
    return out


def time_interleaved(session, names: list[str], x: np.ndarray, rounds: int, per_round: int,  # noqa: ANN001
                     number: int, function: str = "main") -> tuple[dict[str, list[list[float]]], dict[str, np.ndarray]]:
    """The libraries loaded in the session's slots ``names``, each run once (its labels come
    back); then ``rounds`` rounds in which each library, in a rotating order
    (``pipeline.common.noise.rotations``), is timed for ``per_round`` repeats of ``number``
    runs after one warm-up run. Returns the samples (ms) per library and round, and the labels."""
    labels = {name: session.run(x, function=function, slot=name)[0] for name in names}
    samples: dict[str, list[list[float]]] = {name: [] for name in names}
    for order in rotations(list(names), rounds):
        for name in order:
            samples[name].append(session.benchmark(x, function=function, repeat=per_round, number=number,
                                                   slot=name).repeats_ms)
    return samples, labels


EMULATED_ROUNDS = 12


def measure_interleaved(device: Device, libraries: dict[str, Path], x: np.ndarray,
                        rounds: int, function: str = "main") -> tuple[dict, dict, dict]:
    """``libraries``' ``function`` timed against each other on ``device`` (``time_interleaved``,
    one run per build and round). Returns the timings per library (spread, and the samples of each
    round), the label maps, and the conditions: rounds, the cores the server is pinned to, and
    this machine's load average before and after."""
    timings, labels, conditions = measure_functions(device, libraries, {function: x}, rounds)
    return timings[function], labels[function], conditions


def measure_functions(device: Device, libraries: dict[str, Path], inputs: dict[str, np.ndarray],
                      rounds: int) -> tuple[dict[str, dict], dict[str, dict], dict]:
    """``measure_interleaved`` for each function of ``inputs`` (a library of several input
    sizes: each entry's ``main`` and its input), the libraries uploaded once. Returns the
    timings and labels per function, then per library, and the conditions."""
    from rpc.session import connect

    # One run per build and round: a burst of other work on a shared machine (often longer than
    # a run) then hits the builds of a round alike, where three runs in a row let it hit one
    # build's whole round (seen in CI: a 1.39x slower build "within noise", ±52%). The emulator
    # runs seconds per inference, so it gets at most EMULATED_ROUNDS.
    per_round, number = 1, 1
    rounds = min(rounds, EMULATED_ROUNDS) if device.emulated else rounds
    load_before = list(os.getloadavg())
    timings, labels = {}, {}
    with connect(device.key, device.tracker) as session:
        threads = session.set_threads(device.threads)
        for name, path in libraries.items():
            session.load(path, slot=name)
        for function, x in inputs.items():
            samples, labels[function] = time_interleaved(session, list(libraries), x, rounds, per_round,
                                                         number, function)
            timings[function] = {name: {**spread([v for r in rows for v in r]), "number": number,
                                        "threads": threads, "rounds_ms": rows} for name, rows in samples.items()}
        pinned = session.pinned()
    conditions = {"rounds": rounds, "per_round": per_round, "number": number, "order": "rotating",
                  "pinned_cpus": pinned, "load_avg_before": load_before, "load_avg_after": list(os.getloadavg())}
    return timings, labels, conditions
