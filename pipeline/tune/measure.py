"""Measuring on the tuning device: every task's kernel alone, and a whole library's ``main``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

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


def time_main(session, library: Path, x: np.ndarray, repeat: int, number: int) -> tuple[dict, np.ndarray]:  # noqa: ANN001
    """Load ``library`` in the session, run it once (labels back), then time ``main``."""
    session.load(library)
    labels = session.run(x)[0]
    t = session.benchmark(x, repeat=repeat, number=number)
    ms_ = np.asarray(t.repeats_ms)
    return ({"median_ms": float(np.median(ms_)), "p10_ms": float(np.percentile(ms_, 10)),
             "p90_ms": float(np.percentile(ms_, 90)), "repeats": len(ms_), "number": number,
             "threads": t.threads}, labels)
