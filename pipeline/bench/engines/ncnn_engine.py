"""ncnn (CPU) on our network to logits, converted by pnnx from a TorchScript trace of the
BatchNorm-folded model. What ships is ``model.ncnn.param`` + ``model.ncnn.bin``.

fp32 throughout: pnnx is told ``fp16=0`` (it stores fp16 weights by default) and the
runtime's fp16 and bf16 storage and arithmetic are switched off. Runs in ``.venv-ncnn``.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

PARAM, BIN = "model.ncnn.param", "model.ncnn.bin"
CONVERT_TIMEOUT_S = 1800
# Layers that only move or reshape data; what the fast-path sentence counts apart.
LAYOUT_LAYERS = frozenset({"Reshape", "Permute", "Flatten", "Split", "Concat", "Slice", "Crop", "Squeeze",
                           "ExpandDims", "Tile", "MemoryData", "Input"})


def prepare(spec: dict) -> dict:
    import pnnx
    import torch

    from model.weights import load_model
    from pipeline.compile.fold import fold_batchnorm

    out = Path(spec["artifact_dir"])
    out.mkdir(parents=True, exist_ok=True)
    model = fold_batchnorm(load_model(spec["model"], spec["checkpoint"]))
    x = torch.zeros(1, 3, *spec["input_size"])
    with tempfile.TemporaryDirectory(prefix="pnnx-") as tmp:
        traced = Path(tmp) / "model.pt"
        with torch.no_grad():
            torch.jit.trace(model, x).save(str(traced))
        # pnnx writes its intermediate files beside the trace; only the ncnn pair ships.
        command = [pnnx.EXEC_PATH, str(traced), f"inputshape=[1,3,{x.shape[2]},{x.shape[3]}]f32", "fp16=0",
                   f"ncnnparam={out / PARAM}", f"ncnnbin={out / BIN}", f"pnnxparam={tmp}/p.param",
                   f"pnnxbin={tmp}/p.bin", f"pnnxpy={tmp}/p.py", f"pnnxonnx={tmp}/p.onnx", f"ncnnpy={tmp}/n.py"]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=CONVERT_TIMEOUT_S)
    if proc.returncode != 0 or not (out / PARAM).is_file():
        tail = " ".join(proc.stderr.split()[-30:])
        raise RuntimeError(f"pnnx failed ({proc.returncode}): {tail}")
    return {"files": [PARAM, BIN], "counts": f"{PARAM} + {BIN} (pnnx, fp32 weights)"}


def layer_types(param: Path) -> list[tuple[str, str]]:
    """``(type, name)`` of every layer in an ncnn ``.param`` file, in file order (the
    header is a magic number, then the layer and blob counts)."""
    lines = param.read_text().split("\n")[2:]
    return [(fields[0], fields[1]) for fields in (line.split() for line in lines) if fields]


def fast_path(layers: list[tuple[str, str]]) -> str:
    """The one-sentence summary for ``settings``: ncnn runs every layer natively (pnnx's
    conversion fails on what ncnn lacks), so say how many layers only move data."""
    moving = sum(1 for kind, _ in layers if kind in LAYOUT_LAYERS)
    kinds = len({kind for kind, _ in layers})
    return (f"all {len(layers)} layers ({kinds} kinds) run in ncnn's own CPU kernels; "
            f"{moving} of them only move or reshape data")


def load(spec: dict) -> Callable[[np.ndarray], np.ndarray]:
    return _Runner(Path(spec["artifact_dir"]), int(spec["threads"]))


class _Runner:
    """An ``ncnn.Net`` with fp32 storage and arithmetic and ``threads`` threads."""

    def __init__(self, out: Path, threads: int) -> None:
        import ncnn

        self._ncnn = ncnn
        self._net = ncnn.Net()
        opt = self._net.opt
        opt.num_threads = threads
        opt.use_vulkan_compute = False
        opt.use_fp16_storage = opt.use_fp16_packed = opt.use_fp16_arithmetic = False
        opt.use_bf16_storage = opt.use_bf16_packed = False
        opt.use_int8_inference = False
        if self._net.load_param(str(out / PARAM)) != 0 or self._net.load_model(str(out / BIN)) != 0:
            raise RuntimeError(f"ncnn could not load {out / PARAM} + {BIN}")
        self._input, self._output = self._net.input_names()[0], self._net.output_names()[0]
        self._layers = layer_types(out / PARAM)
        self.settings = {
            "precision": "fp32 (pnnx fp16=0; ncnn fp16/bf16 storage, packing and arithmetic off)",
            "threads": opt.num_threads,
            "fast path": fast_path(self._layers),
        }

    def _extractor(self, x: np.ndarray):  # noqa: ANN202 - ncnn.Extractor
        ex = self._net.create_extractor()
        ex.input(self._input, self._ncnn.Mat(np.ascontiguousarray(x[0])))
        return ex

    def __call__(self, x: np.ndarray) -> np.ndarray:
        _, out = self._extractor(x).extract(self._output)
        return np.array(out)[None]

    def profile(self, x: np.ndarray, runs: int) -> list[dict]:
        """Per layer kind: ncnn's Python wheel has no profiler, but an extractor computes a
        blob's missing producers only, so extracting every layer's first output in file
        (topological) order times each layer by itself. Light mode stays on, as in a normal
        run: it frees a blob once its one consumer ran (pnnx gives shared blobs a ``Split``),
        which that order never asks for again, and without it every in-place layer would copy
        its input. ``type=1`` keeps each blob in its packed layout (the default would unpack
        every one, a copy the normal run does not make)."""
        self(x)  # the first run (allocations) stays out, as in the timed runs
        tops = [(kind, layer.tops[0]) for (kind, _), layer in zip(self._layers, self._net.layers(), strict=True)
                if layer.tops]
        totals: dict[str, list[float]] = {}
        for _ in range(runs):
            ex = self._extractor(x)
            for kind, top in tops:
                t0 = time.perf_counter()
                ex.extract(top, 1)
                entry = totals.setdefault(kind, [0, 0.0])
                entry[0] += 1
                entry[1] += time.perf_counter() - t0
        return sorted(({"kernel": k, "calls": c / runs, "ms": t * 1e3 / runs} for k, (c, t) in totals.items()),
                      key=lambda e: -e["ms"])
