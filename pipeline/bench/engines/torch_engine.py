"""PyTorch eager: our model with ``output="vim"`` (labels) or ``"logits"`` under
``torch.inference_mode``, float32.

What ships is the converted state dict (``model.pt``); the model code is the project's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from model.weights import load_model

STATE_DICT = "model.pt"


def prepare(spec: dict) -> dict:
    out = Path(spec["artifact_dir"])
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(spec["model"], spec["checkpoint"])
    torch.save(model.state_dict(), out / STATE_DICT)
    return {"files": [STATE_DICT], "counts": "state dict (torch.save)"}


def load(spec: dict) -> Callable[[np.ndarray], np.ndarray]:
    threads = int(spec["threads"])
    torch.set_num_threads(threads)
    output = "vim" if spec.get("output", "labels") == "labels" else "logits"
    model = load_model(spec["model"], Path(spec["artifact_dir"]) / STATE_DICT, output=output).eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    run.settings = {"precision": "fp32", "threads": threads, "fast path": "every op (eager, oneDNN/ATen CPU kernels)"}
    return run
