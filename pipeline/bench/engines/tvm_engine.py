"""TVM: our model compiled with the default CPU pipeline (untuned) or with the MetaSchedule
database of ``make tune`` (tuned), for the same target ``make tune DEVICE=host`` uses
(``num-cores`` = the thread count), VIM tail included. What ships is ``model.so``; its
``main`` gives the label map and its ``logits`` the network alone (the same private
network function, so the same kernels: ``pipeline.compile.tail``).

Builds are artifact directories (``model.so`` + ``meta.json``) reused while nothing they
depend on changed (``pipeline.compile.artifact.cached``; for a tuned build also the database).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.common.tvm_log import quiet_tvm
from pipeline.compile.artifact import LIBRARY, cached, verify


def host_config(threads: int):  # noqa: ANN201 - rpc.linkers.BuildConfig
    """The host profile's build settings as ``make tune DEVICE=host`` has them (``rpc.connect``)."""
    from rpc.linkers import build_config

    return build_config("host", mode="local", threads=threads, check_linker=False)


def prepare(spec: dict) -> dict:
    from model.weights import load_model
    from pipeline.compile.build import build_library, build_spec, network_module, write_library
    from pipeline.compile.passes import GraphOptions
    from pipeline.tune.workdir import WorkDir

    out = Path(spec["artifact_dir"])
    work = WorkDir(Path(spec["tuning_dir"])) if spec.get("tuning_dir") else None
    digest = work.database_digest() if work else None
    if work and digest is None:
        raise FileNotFoundError(f"no MetaSchedule database in {work.path}")
    model = load_model(spec["model"], spec["checkpoint"])
    build = build_spec(spec["model"], model, tuple(spec["input_size"]), host_config(int(spec["threads"])),
                       Path(spec["checkpoint"]), graph=GraphOptions(**spec.get("graph", {})))
    info = {"files": [LIBRARY], "counts": "model.so (weights inside)"}
    meta = cached(out, build)
    if meta is not None and meta.get("database_sha256") == digest:
        return {**info, "reused": True}
    executable = build_library(network_module(model, build, out / "model.onnx"), build.target,
                               work.path if work else None)
    write_library(out, build, executable, "native",
                  {"tuned": work is not None, "database": str(work.path) if work else None,
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
    runner = _Runner(lib, tvm.cpu(0), "main" if spec.get("output", "labels") == "labels" else "logits")
    runner.settings = {"precision": "fp32", "threads": int(spec["threads"]), "fast path": "every kernel (compiled)"}
    return runner


class _Runner:
    """``function`` (``main`` or ``logits``) of a loaded library; ``profile`` times every call
    the VM makes."""

    def __init__(self, lib, dev, function: str) -> None:  # noqa: ANN001 - tvm Module, Device
        import tvm
        from tvm import relax

        self._tvm, self._relax, self._lib, self._dev, self._function = tvm, relax, lib, dev, function
        self._call = relax.VirtualMachine(lib, dev)[function]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._call(self._tvm.runtime.tensor(x, self._dev)).numpy()

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
            vm[self._function](arg)
        return sorted(({"kernel": k, "calls": c / runs, "ms": t * 1e3 / runs} for k, (c, t) in totals.items()),
                      key=lambda e: -e["ms"])
