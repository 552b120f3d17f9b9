"""OpenVINO (CPU plugin) on the same ONNX files as ONNX Runtime (``ort_engine.write_onnx``):
``logits.onnx`` and ``model.onnx`` with the VIM tail (Unique, Gather, Resize, ArgMax), which
OpenVINO's ONNX frontend reads as it is. What ships is the ONNX file; the plugin compiles it
at load time.

Float32 is forced: on a CPU with bf16 (AVX512_BF16, AMX) or fp16 the plugin otherwise picks
that precision (``INFERENCE_PRECISION_HINT``), so the hint is set to f32 and the precision
the compiled model reports is what the results show. Profiles are the plugin's per-node
performance counters (``enable_profiling``), on a second compiled model so that the timed
one runs uninstrumented.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.properties as props
import openvino.properties.hint as hints

from pipeline.bench.engines.ort_engine import ONNX_FILES, write_onnx


def prepare(spec: dict) -> dict:
    write_onnx(spec)
    return {"files": [ONNX_FILES["labels"]], "counts": "model.onnx (weights inside; compiled at load)"}


def load(spec: dict) -> Callable[[np.ndarray], np.ndarray]:
    path = Path(spec["artifact_dir"]) / ONNX_FILES[spec.get("output", "labels")]
    return _Runner(path, int(spec["threads"]))


def _config(threads: int, profiling: bool) -> dict:
    return {hints.inference_precision: ov.Type.f32, hints.execution_mode: hints.ExecutionMode.ACCURACY,
            hints.performance_mode: hints.PerformanceMode.LATENCY, hints.num_requests: 1,
            props.inference_num_threads: threads, props.enable_profiling: profiling}


def _kernel_kind(info) -> str:  # noqa: ANN001 - ov.ProfilingInfo
    """The node's type (depthwise convolutions, ``jit_*_dw_*`` kernels, are ``<type> depthwise``;
    the label tail's nodes, named ``vim_*`` in the ONNX graph, are ``VIM tail``)."""
    if info.node_name.startswith("vim_"):
        return "VIM tail"
    return f"{info.node_type} depthwise" if "_dw_" in info.exec_type else info.node_type


class _Runner:
    """One compiled model and infer request; ``profile`` sums the performance counters by kind."""

    def __init__(self, path: Path, threads: int) -> None:
        self._core, self._path, self._threads = ov.Core(), path, threads
        self._request = self._compile(False).create_infer_request()
        compiled = self._request.get_compiled_model()
        self.settings = {"precision": compiled.get_property(hints.inference_precision).get_type_name(),
                         "threads": int(compiled.get_property(props.inference_num_threads)),
                         "execution mode": str(compiled.get_property(hints.execution_mode)).split(".")[-1],
                         "fast path": "every node on the CPU plugin (oneDNN/JIT kernels)"}

    def _compile(self, profiling: bool):  # noqa: ANN202 - ov.CompiledModel
        return self._core.compile_model(self._core.read_model(str(self._path)), "CPU",
                                        _config(self._threads, profiling))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self._request.infer({0: x})
        return self._request.get_output_tensor(0).data.copy()

    def profile(self, x: np.ndarray, runs: int) -> list[dict]:
        request = self._compile(True).create_infer_request()
        request.infer({0: x})  # the first run (allocations, first touch) is left out, as in the timed runs
        totals: dict[str, list[float]] = {}
        for _ in range(runs):
            request.infer({0: x})
            for info in request.profiling_info:  # the counters of the last inference
                if info.status == info.Status.EXECUTED:
                    entry = totals.setdefault(_kernel_kind(info), [0, 0.0])
                    entry[0] += 1
                    entry[1] += info.real_time.total_seconds() * 1e3
        return sorted(({"kernel": k, "calls": c / runs, "ms": t / runs} for k, (c, t) in totals.items()),
                      key=lambda e: -e["ms"])
