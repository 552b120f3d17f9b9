"""TVM: our model compiled with the default CPU pipeline (untuned) or with the MetaSchedule
database of ``make tune`` (tuned), for the same target ``make tune DEVICE=host`` uses
(``num-cores`` = the thread count), VIM tail included. What ships is ``model.so``.

Builds are artifact directories (``model.so`` + ``meta.json``) reused while nothing they
depend on changed (``pipeline.artifact.cached``; for a tuned build also the database).
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.artifact import LIBRARY, BuildSpec, cached, verify, write_artifact
from pipeline.tvm_log import quiet_tvm


def host_target(threads: int) -> dict:
    """The host profile's target as ``make tune DEVICE=host`` builds it (``connect_device``)."""
    from rpc.linkers import build_config

    return {**build_config("host", mode="local").target, "num-cores": threads}


def database_digest(work_dir: Path) -> str | None:
    """SHA-256 over the MetaSchedule database files, None when there is no database."""
    from schedules.tuning import RECORDS, WORKLOADS

    paths = [work_dir / name for name in (WORKLOADS, RECORDS)]
    if not all(p.is_file() and p.stat().st_size for p in paths):
        return None
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


def prepare(spec: dict) -> dict:
    import tvm

    from model.weights import load_model
    from pipeline.artifact import sha256_file
    from pipeline.compile import import_network
    from pipeline.graph import compose, effective_upsample
    from schedules import tuning

    out = Path(spec["artifact_dir"])
    work_dir = Path(spec["tuning_dir"]) if spec.get("tuning_dir") else None
    digest = database_digest(work_dir) if work_dir else None
    if work_dir and digest is None:
        raise FileNotFoundError(f"no MetaSchedule database in {work_dir}")
    model = load_model(spec["model"], spec["checkpoint"])
    upsample = effective_upsample("vim", model.cfg.num_classes)
    target = host_target(int(spec["threads"]))
    build = BuildSpec(model=spec["model"], num_classes=model.cfg.num_classes, input_size=tuple(spec["input_size"]),
                      upsample=upsample, frontend="torch", device="host", target=target,
                      weights_sha256=sha256_file(spec["checkpoint"]), mean=model.cfg.mean, std=model.cfg.std)
    info = {"files": [LIBRARY], "counts": "model.so (weights inside)"}
    meta = cached(out, build)
    if meta is not None and meta.get("database_sha256") == digest:
        return {**info, "reused": True}
    shape = build.input_shape
    module = compose(import_network(model, shape, "torch", out / "model.onnx"), shape, upsample)
    with quiet_tvm():
        executable = tuning.build(module, tvm.target.Target(target), work_dir)
        write_artifact(out, build, lambda path: executable.export_library(path),
                       {"tuned": work_dir is not None, "database": str(work_dir) if work_dir else None,
                        "database_sha256": digest, "threads": int(spec["threads"])})
    return {**info, "reused": False}


def load(spec: dict) -> Callable[[np.ndarray], np.ndarray]:
    # tvm_ffi imports torch for DLPack interop when it is installed; the deployed runtime
    # needs no torch, so keep it out of this process (and out of its peak memory).
    sys.modules.setdefault("torch", None)
    import tvm

    out = Path(spec["artifact_dir"])
    verify(out)
    with quiet_tvm():
        lib = tvm.runtime.load_module(str(out / LIBRARY))
    return _Runner(lib, tvm.cpu(0))


class _Runner:
    """``main`` of a loaded library; ``profile`` times every call the VM makes."""

    def __init__(self, lib, dev) -> None:  # noqa: ANN001 - tvm Module, Device
        import tvm
        from tvm import relax

        self._tvm, self._relax, self._lib, self._dev = tvm, relax, lib, dev
        self._main = relax.VirtualMachine(lib, dev)["main"]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._main(self._tvm.runtime.tensor(x, self._dev)).numpy()

    def profile(self, x: np.ndarray, runs: int) -> list[dict]:
        """Per kernel (and VM builtin): calls and ms per inference, over ``runs`` runs, on a
        second VM so the timed one stays uninstrumented. Kernels run synchronously on the CPU,
        so the time between the VM's before/after callbacks is the kernel's."""
        vm = self._relax.VirtualMachine(self._lib, self._dev)
        totals: dict[str, list[float]] = {}
        stack: list[list] = []  # [start, made calls itself]: only leaf calls are counted

        def instrument(_func, name, before_run, _ret, *_args) -> int:  # noqa: ANN001
            if before_run:
                if stack:
                    stack[-1][1] = True  # a Relax function (the network) calling kernels
                stack.append([time.perf_counter(), False])
            else:
                start, nested = stack.pop()
                if not nested:
                    entry = totals.setdefault(str(name), [0, 0.0])
                    entry[0] += 1
                    entry[1] += time.perf_counter() - start
            return 0  # VMInstrumentReturnKind.NO_OP

        vm.set_instrument(instrument)
        arg = self._tvm.runtime.tensor(x, self._dev)
        for _ in range(runs):
            vm["main"](arg)
        return sorted(({"kernel": k, "calls": c / runs, "ms": t * 1e3 / runs} for k, (c, t) in totals.items()),
                      key=lambda e: -e["ms"])
