"""MNN (CPU backend) on ``logits.onnx`` and ``model.onnx`` (``ort_engine.write_onnx``),
converted to ``.mnn`` by the converter's library entry (``_tools.mnnconvert``, what the
``mnnconvert`` command calls). The command itself is not used: its Python wrapper imports a
logger that pip-installs a logging SDK and sends usage data. The conversion runs under
``offline.offline()``, which blocks and records any network access or program start the
converter tries, and fails if there was one. What ships is the ``.mnn`` file.

Inference goes through MNN's Module API (the session API cannot run the VIM tail, whose
shapes depend on the data: Unique). ``precision: high`` keeps every kernel float32 (MNN's
default, ``normal``, may pick fp16 or bf16 arithmetic where the CPU has it). The logits
runner's profile times every operator between MNN's session callbacks (per-op begin/end),
as TVM's profile does with the VM's; the label-map runner has none.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.bench.engines.offline import offline
from pipeline.bench.engines.ort_engine import ONNX_FILES, write_onnx

MNN_FILES = {k: Path(name).with_suffix(".mnn").name for k, name in ONNX_FILES.items()}
OUTPUT_NAMES = {"labels": "labels", "logits": "logits"}  # the ONNX graphs' output names
def convert(onnx_path: Path, mnn_path: Path) -> None:
    """``onnx_path`` to ``mnn_path`` (float32 weights), offline."""
    with offline() as attempts:
        import _tools  # MNN's converter (C++), installed beside the MNN package

        ok = _tools.mnnconvert(["mnnconvert", "-f", "ONNX", "--modelFile", str(onnx_path),
                                "--MNNModel", str(mnn_path), "--bizCode", "ppmseg"])
    if attempts:
        raise RuntimeError(f"MNN's converter tried to reach out: {'; '.join(attempts)}")
    if not ok or not mnn_path.is_file():
        raise RuntimeError(f"MNN could not convert {onnx_path.name} (see the log)")


def prepare(spec: dict) -> dict:
    for output, onnx_path in write_onnx(spec).items():
        convert(onnx_path, onnx_path.with_name(MNN_FILES[output]))
    return {"files": [MNN_FILES["labels"]], "counts": "model.mnn (weights inside, float32)"}


def _config(threads: int) -> dict:
    return {"backend": "CPU", "numThread": threads, "precision": "high"}


def load(spec: dict) -> Callable[[np.ndarray], np.ndarray]:
    import MNN.expr as F
    import MNN.nn as nn

    output, threads = spec.get("output", "labels"), int(spec["threads"])
    path = Path(spec["artifact_dir"]) / MNN_FILES[output]
    runtime = nn.create_runtime_manager((_config(threads),))
    net = nn.load_module_from_file(str(path), ["x"], [OUTPUT_NAMES[output]], runtime_manager=runtime)

    def run(x: np.ndarray) -> np.ndarray:
        return np.array(net.forward(F.const(x, list(x.shape), F.NCHW)).read())

    run.settings = {"precision": "fp32 (precision=high)", "threads": threads,
                    "fast path": "every operator on MNN's CPU backend"}
    if output == "logits":
        run.profile = lambda x, runs: _profile(path, threads, x, runs)
    return run


def _profile(path: Path, threads: int, x: np.ndarray, runs: int) -> list[dict]:
    """Per operator type: calls and ms per inference over ``runs`` runs of a session, timed
    between MNN's per-operator callbacks (a first run left out)."""
    import MNN

    interpreter = MNN.Interpreter(str(path))
    session = interpreter.createSession(_config(threads))
    interpreter.getSessionInput(session).copyFrom(
        MNN.Tensor(x.shape, MNN.Halide_Type_Float, x, MNN.Tensor_DimensionType_Caffe))
    totals: dict[str, list[float]] = {}
    started: list[float] = []

    def before(_tensors, _info) -> bool:  # noqa: ANN001 - MNN tensors, OpInfo
        started.append(time.perf_counter())
        return True

    def after(_tensors, info) -> bool:  # noqa: ANN001
        entry = totals.setdefault(info.getType(), [0, 0.0])
        entry[0] += 1
        entry[1] += time.perf_counter() - started.pop()
        return True

    interpreter.runSession(session)
    for _ in range(runs):
        interpreter.runSessionWithCallBackInfo(session, before, after)
    return sorted(({"kernel": k, "calls": c / runs, "ms": t * 1e3 / runs} for k, (c, t) in totals.items()),
                  key=lambda e: -e["ms"])
