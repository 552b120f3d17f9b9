"""Inference engines for the peer benchmark (``make bench``), one module each.

Every engine module offers ``prepare(spec) -> dict`` (write what ships to a device into
``spec["artifact_dir"]``) and ``load(spec) -> run`` (``run(x)`` maps a normalized float32
``[1, 3, H, W]`` array to an int32 ``[H, W]`` label map). ``pipeline.bench.worker`` runs
one of them in its own process. This package imports only the standard library, because
the Paddle engine runs under the reference environment (``.venv-ref``), which has
neither torch nor TVM.
"""

from __future__ import annotations

# engine name -> (module, runs under the reference environment)
ENGINES: dict[str, tuple[str, bool]] = {
    "torch": ("pipeline.bench.engines.torch_engine", False),
    "onnxruntime": ("pipeline.bench.engines.ort_engine", False),
    "paddle": ("pipeline.bench.engines.paddle_engine", True),
    "tvm-untuned": ("pipeline.bench.engines.tvm_engine", False),
    "tvm-tuned": ("pipeline.bench.engines.tvm_engine", False),
    "tvm-tuned-nchw": ("pipeline.bench.engines.tvm_engine", False),
    "tvm-tuned-fused": ("pipeline.bench.engines.tvm_engine", False),
    "tvm-tuned-focused": ("pipeline.bench.engines.tvm_engine", False),
    "tvm-tuned-fused-focused": ("pipeline.bench.engines.tvm_engine", False),
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
