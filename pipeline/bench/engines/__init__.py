"""Inference engines for the peer benchmark (``make bench``), one module each.

The contract every engine module keeps:

- ``prepare(spec) -> dict`` writes what ships to a device into ``spec["artifact_dir"]``
  (everything the engine's outputs need) and returns ``{"files": [...], "counts": "..."}``;
- ``load(spec) -> run``: ``spec["output"]`` is ``"labels"`` or ``"logits"`` (one of the
  engine's ``Engine.outputs``); ``run(x)`` maps a normalized float32 ``[1, 3, H, W]`` array
  to an int32 ``[H, W]`` (or ``[1, H, W]``) label map, or to float32 ``[1, C, h, w]`` logits.
  ``run`` may have ``profile(x, n) -> [{"kernel", "calls", "ms"}, ...]`` (per inference over
  n runs) and a ``settings: dict`` attribute (precision, threads, what runs outside the
  engine's fast path), which the worker sends in its ``ready`` reply and the results show.

``pipeline.bench.worker`` runs one module in its own process, under the Python of the
engine's ``env``: ``"main"`` (``.venv``), ``"ref"`` (``.venv-ref``, PaddleSeg's) or the name of
a pinned requirements file ``pipeline/bench/envs/<env>.txt``, whose ``.venv-<env>``
``pipeline.bench.envs.ensure_env`` creates on first use. This package imports only the
standard library: it is read under every one of those environments.
"""

from __future__ import annotations

from dataclasses import dataclass

BOTH = ("labels", "logits")
LOGITS_ONLY = ("logits",)  # engines that cannot express the VIM tail (no Unique / dynamic K)


@dataclass(frozen=True)
class Engine:
    module: str
    env: str = "main"
    outputs: tuple[str, ...] = BOTH


def column(output: str, key: str) -> str:
    """A results row's key for ``output``'s column: the label map's keep their names of before
    the logits column existed (``median_ms``), the logits' are ``logits_median_ms``."""
    return key if output == "labels" else f"{output}_{key}"


def _tvm() -> Engine:
    return Engine("pipeline.bench.engines.tvm_engine")


ENGINES: dict[str, Engine] = {
    "torch": Engine("pipeline.bench.engines.torch_engine"),
    "onnxruntime": Engine("pipeline.bench.engines.ort_engine"),
    "paddle": Engine("pipeline.bench.engines.paddle_engine", env="ref"),
    "openvino": Engine("pipeline.bench.engines.openvino_engine"),
    "mnn": Engine("pipeline.bench.engines.mnn_engine"),
    "litert": Engine("pipeline.bench.engines.litert_engine", env="mobile", outputs=LOGITS_ONLY),
    "executorch": Engine("pipeline.bench.engines.executorch_engine", env="mobile", outputs=LOGITS_ONLY),
    "ncnn": Engine("pipeline.bench.engines.ncnn_engine", env="mobile", outputs=LOGITS_ONLY),
    "tvm-untuned": _tvm(),
    "tvm-tuned": _tvm(),
    "tvm-tuned-nchw": _tvm(),
    "tvm-tuned-fused": _tvm(),
    "tvm-tuned-focused": _tvm(),
    "tvm-tuned-fused-focused": _tvm(),
}
# The tuned TVM engines: the `make tune` run whose database each reads, as that run's settings
# apart from the defaults: "graph" (``pipeline.compile.passes.GraphOptions`` fields) and
# "search" (``pipeline.tune.job.SEARCHES``). The shipped defaults, then each lever switched
# from its default, then both levers that are off by default switched together.
TUNED: dict[str, dict] = {
    "tvm-tuned": {},
    "tvm-tuned-nchw": {"graph": {"blocked": False}},
    "tvm-tuned-fused": {"graph": {"fused": True}},
    "tvm-tuned-focused": {"search": "focused"},
    "tvm-tuned-fused-focused": {"graph": {"fused": True}, "search": "focused"},
}
