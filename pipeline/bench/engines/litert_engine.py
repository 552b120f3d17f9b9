"""LiteRT (the TFLite interpreter with its default XNNPACK delegate) on our network to logits,
converted straight from PyTorch by ``litert-torch`` (no TensorFlow). What ships is
``model.tflite``.

fp32 throughout: the conversion keeps float32 weights (no quantization recipe), and the
delegate is created with its default flags, which do not force fp16 inference. The Python
wheel has no profiler (LiteRT's op profiler is reached only from C++ and its benchmark
binary), so this engine offers no ``profile``. Runs in the environment of
``pipeline/bench/envs/mobile.txt``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

TFLITE = "model.tflite"
DELEGATE = "DELEGATE"  # the op name the interpreter gives a node that replaced a partition


def prepare(spec: dict) -> dict:
    import litert_torch
    import torch

    from model.weights import load_model
    from pipeline.compile.fold import fold_batchnorm

    out = Path(spec["artifact_dir"])
    out.mkdir(parents=True, exist_ok=True)
    model = fold_batchnorm(load_model(spec["model"], spec["checkpoint"]))
    litert_torch.convert(model, (torch.zeros(1, 3, *spec["input_size"]),)).export(str(out / TFLITE))
    return {"files": [TFLITE], "counts": f"{TFLITE} (weights inside, fp32)"}


def outside_delegate(ops: list[dict], graph_outputs: set[int]) -> Counter:
    """The original operators the interpreter still runs itself, by name. The Python API has
    no execution plan, so walk the data flow backwards: an operator runs outside XNNPACK when
    an output of it feeds a delegate node, the graph's output or another such operator, and
    is not produced by a delegate node (a partition's own outputs)."""
    delegates = [op for op in ops if op["op_name"] == DELEGATE]
    produced = {int(t) for op in delegates for t in op["outputs"]}
    needed = ({int(t) for op in delegates for t in op["inputs"]} | graph_outputs) - produced
    outside: Counter = Counter()
    for op in reversed([op for op in ops if op["op_name"] != DELEGATE]):  # the model's order is topological
        if any(int(t) in needed for t in op["outputs"]):
            outside[op["op_name"]] += 1
            needed |= {int(t) for t in op["inputs"] if t >= 0} - produced
    return outside


def fast_path(interpreter) -> str:  # noqa: ANN001 - ai_edge_litert Interpreter
    """One sentence: the XNNPACK partitions and the operators left outside them."""
    ops = interpreter._get_ops_details()  # the public API lists no nodes
    partitions = sum(1 for op in ops if op["op_name"] == DELEGATE)
    outside = outside_delegate(ops, {d["index"] for d in interpreter.get_output_details()})
    total = len(ops) - partitions
    left = ", ".join(f"{name} x{n}" for name, n in outside.most_common()) or "nothing"
    return (f"{partitions} XNNPACK partitions hold {total - sum(outside.values())} of {total} operators; "
            f"the interpreter runs {left}")


def precision(interpreter) -> str:  # noqa: ANN001 - ai_edge_litert Interpreter
    """fp32, checked on the model's tensors (a float16 tensor would mean fp16 weights)."""
    kinds = Counter(np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details())
    if kinds.get("float16") or kinds.get("bfloat16"):
        raise ValueError(f"{TFLITE} holds 16-bit float tensors ({dict(kinds)}); the benchmark compares fp32")
    return f"fp32 ({kinds['float32']} float32 tensors, no 16-bit ones; XNNPACK default flags, no forced fp16)"


def load(spec: dict) -> Callable[[np.ndarray], np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    threads = int(spec["threads"])
    interpreter = Interpreter(model_path=str(Path(spec["artifact_dir"]) / TFLITE), num_threads=threads)
    interpreter.allocate_tensors()  # applies the default XNNPACK delegate
    source = interpreter.get_input_details()[0]["index"]
    sink = interpreter.get_output_details()[0]["index"]

    def run(x: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(source, x)
        interpreter.invoke()
        return interpreter.get_tensor(sink)

    run.settings = {"precision": precision(interpreter), "threads": threads, "fast path": fast_path(interpreter)}
    return run
