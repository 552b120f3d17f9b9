"""The phone runtimes of the peer benchmark (LiteRT, ExecuTorch, ncnn): real conversion and
inference on a 64x64 input through the worker protocol, under the pinned environment the
engines run in, with logits compared against PyTorch eager, fp32 and the thread count
reported, and what runs outside each fast path measured."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from model.weights import load_model
from pipeline.bench.engines import ENGINES
from pipeline.bench.engines.litert_engine import outside_delegate
from pipeline.bench.envs import ensure_env
from pipeline.bench.peers import worker_env

ROOT = Path(__file__).resolve().parents[1]
SIZE = (64, 64)
MAX_ABS_DIFF = 1e-4
THREADS = 1
FP32_WEIGHTS_BYTES = 5_000_000  # Tiny's ~1.45M folded weights: ~5.8 MB in fp32, half in fp16
# What each engine's measured fast-path sentence must name (the findings).
FAST_PATH = {"litert": "XNNPACK partitions", "executorch": "mean", "ncnn": "ncnn's own"}


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory, reference_dir: Path) -> dict:
    """The input, PyTorch eager's logits for it and the checkpoint both load."""
    tmp = tmp_path_factory.mktemp("mobile")
    checkpoint = reference_dir / "tiny.pdparams"
    x = np.random.default_rng(0).standard_normal((1, 3, *SIZE)).astype(np.float32)
    np.save(tmp / "input.npy", x)
    with torch.inference_mode():
        logits = load_model("tiny", checkpoint).eval()(torch.from_numpy(x)).numpy()
    return {"tmp": tmp, "checkpoint": str(checkpoint), "logits": logits}


def _worker(engine: str, mode: str, spec: dict, commands: list[dict], timeout: float) -> list[dict]:
    """``python -m pipeline.bench.worker`` under the engine's environment: its JSON replies."""
    python = ensure_env(ENGINES[engine].env)
    stdin = "".join(json.dumps(c) + "\n" for c in commands)
    proc = subprocess.run([str(python), "-m", "pipeline.bench.worker", mode, ENGINES[engine].module, json.dumps(spec)],
                          input=stdin, capture_output=True, text=True, cwd=ROOT, env=worker_env(THREADS),
                          timeout=timeout)
    replies = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and all(r["ok"] for r in replies), (replies, proc.stderr[-3000:])
    return replies


@pytest.mark.parametrize("engine", ["litert", "executorch", "ncnn"])
def test_engine_converts_runs_and_matches_pytorch(case: dict, engine: str) -> None:
    assert ENGINES[engine].outputs == ("logits",)  # no dynamic Unique: VIM is out of reach
    tmp = case["tmp"]
    spec = {"model": "tiny", "input_size": list(SIZE), "threads": THREADS, "checkpoint": case["checkpoint"],
            "artifact_dir": str(tmp / engine), "output": "logits", "input_path": str(tmp / "input.npy"),
            "result_path": str(tmp / f"logits-{engine}.npy"), "warmup": 1}
    (prepared,) = _worker(engine, "prepare", spec, [], timeout=900)
    assert sum((tmp / engine / f).stat().st_size for f in prepared["files"]) > FP32_WEIGHTS_BYTES
    ready, profiled = _worker(engine, "serve", spec, [{"cmd": "profile", "n": 2}, {"cmd": "quit"}], timeout=300)

    logits = np.load(spec["result_path"])
    assert logits.shape == case["logits"].shape == (1, 150, SIZE[0] // 16, SIZE[1] // 16)  # Tiny's head: 1/16
    assert logits.dtype == np.float32
    assert np.abs(logits - case["logits"]).max() <= MAX_ABS_DIFF

    settings = ready["settings"]
    assert settings["precision"].startswith("fp32"), settings
    assert settings["threads"] == THREADS
    assert FAST_PATH[engine] in settings["fast path"], settings

    profile = profiled["profile"]
    if engine == "litert":
        assert profile is None  # the Python wheel has no profiler
        return
    assert all(e["calls"] > 0 and e["ms"] >= 0 for e in profile)
    kinds = {e["kernel"] for e in profile}
    assert any("onvolution" in k for k in kinds), kinds  # XNNPACK's and ncnn's convolution kernels


def test_outside_delegate_walks_the_data_flow_back() -> None:
    """A graph ``t0 -A-> t1 -B-> t2 -C-> t3 -D-> t4`` where B and D were delegated in two
    partitions: A and C feed delegates, so the interpreter runs them; B and D do not count."""
    ops = [{"op_name": "A", "inputs": [0], "outputs": [1]}, {"op_name": "B", "inputs": [1, -1], "outputs": [2]},
           {"op_name": "C", "inputs": [2], "outputs": [3]}, {"op_name": "D", "inputs": [3], "outputs": [4]},
           {"op_name": "DELEGATE", "inputs": [1], "outputs": [2]},
           {"op_name": "DELEGATE", "inputs": [3], "outputs": [4]}]
    assert outside_delegate(ops, {4}) == {"A": 1, "C": 1}
    assert outside_delegate(ops[:4], {4}) == {"A": 1, "B": 1, "C": 1, "D": 1}  # nothing delegated
