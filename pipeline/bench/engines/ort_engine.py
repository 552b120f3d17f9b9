"""ONNX Runtime (CPU execution provider) on the dynamo ONNX export of our model: ``logits.onnx``
(the network alone) and ``model.onnx``, the same graph with the VIM tail appended as ONNX
operators, so that it returns the label map as the other engines do (weights inside both).
The OpenVINO and MNN engines start from the same two files (``write_onnx``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pipeline.common.files import atomic_path

ONNX_FILES = {"labels": "model.onnx", "logits": "logits.onnx"}
LABELS = "labels"


def append_label_tail(model: onnx.ModelProto, size: tuple[int, int], vim: bool) -> onnx.ModelProto:
    """Replace the graph's logits output ``[1, C, h, w]`` with an int32 label map
    ``[1, H, W]``: VIM (low-resolution argmax -> the K present classes (Unique, sorted)
    -> Gather those K channels -> bilinear Resize with half-pixel centres, which is
    PyTorch's ``align_corners=False`` -> ArgMax -> Gather the class ids) or, with
    ``vim=False``, Resize of all channels + ArgMax. Edits ``model`` in place."""
    graph = model.graph
    if len(graph.output) != 1:
        raise ValueError(f"expected one graph output (the logits), got {len(graph.output)}")
    logits = graph.output[0].name
    height, width = size

    def const(name: str, values: list[int]) -> str:
        graph.initializer.append(numpy_helper.from_array(np.array(values, np.int64), name))
        return name

    def resize(src: str, sizes: str, out: str) -> onnx.NodeProto:
        return helper.make_node("Resize", [src, "", "", sizes], [out], mode="linear",
                                coordinate_transformation_mode="half_pixel", name=out)

    if vim:
        nodes = [
            helper.make_node("ArgMax", [logits], ["vim_low_argmax"], axis=1, keepdims=0, name="vim_low_argmax"),
            helper.make_node("Unique", ["vim_low_argmax"], ["vim_present"], sorted=1, name="vim_present"),
            helper.make_node("Gather", [logits, "vim_present"], ["vim_selected"], axis=1, name="vim_selected"),
            helper.make_node("Shape", ["vim_present"], ["vim_k"], name="vim_k"),
            helper.make_node("Concat", [const("vim_one", [1]), "vim_k", const("vim_hw", [height, width])],
                             ["vim_sizes"], axis=0, name="vim_sizes"),
            resize("vim_selected", "vim_sizes", "vim_upsampled"),
            helper.make_node("ArgMax", ["vim_upsampled"], ["vim_winner"], axis=1, keepdims=0, name="vim_winner"),
            helper.make_node("Gather", ["vim_present", "vim_winner"], ["vim_labels64"], axis=0, name="vim_labels64"),
        ]
    else:
        dims = [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
        nodes = [
            resize(logits, const("full_sizes", [1, dims[1], height, width]), "full_upsampled"),
            helper.make_node("ArgMax", ["full_upsampled"], ["vim_labels64"], axis=1, keepdims=0, name="vim_labels64"),
        ]
    nodes.append(helper.make_node("Cast", ["vim_labels64"], [LABELS], to=TensorProto.INT32, name="vim_labels"))
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(LABELS, TensorProto.INT32, [1, height, width]))
    return model


def write_onnx(spec: dict) -> dict[str, Path]:
    """Both ONNX files in ``spec["artifact_dir"]``, by output."""
    from model.upsample import VIM_MIN_CLASSES
    from model.weights import load_model
    from pipeline.compile.fold import fold_batchnorm
    from pipeline.compile.frontend import export_onnx

    out = Path(spec["artifact_dir"])
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / name for k, name in ONNX_FILES.items()}
    model = load_model(spec["model"], spec["checkpoint"])
    size = tuple(spec["input_size"])
    # The same graph TVM imports (BatchNorm folded; ORT would fold it itself anyway).
    export_onnx(fold_batchnorm(model), (1, 3, *size), paths["logits"])
    graph = append_label_tail(onnx.load(str(paths["logits"])), size, model.cfg.num_classes >= VIM_MIN_CLASSES)
    onnx.checker.check_model(graph)
    with atomic_path(paths["labels"]) as tmp:
        onnx.save(graph, str(tmp))
    return paths


def bound_run(model: str, weights: str | None, x: np.ndarray, threads: int, directory: Path) -> Callable[[], None]:
    """A warmed-up run of ONNX Runtime on ``x``, ``model``'s network and label tail exported
    into ``directory``, input and output bound in place: what ``ppmseg tune`` gives its
    report's comparison (``pipeline.tune.crossing``)."""
    spec = {"model": model, "checkpoint": weights, "input_size": list(x.shape[2:]), "artifact_dir": str(directory),
            "threads": threads, "output": "labels"}
    write_onnx(spec)
    return load(spec).bound(x)


def prepare(spec: dict) -> dict:
    write_onnx(spec)
    return {"files": [ONNX_FILES["labels"]], "counts": "model.onnx (weights inside)"}


def load(spec: dict) -> Callable[[np.ndarray], np.ndarray]:
    output = spec.get("output", "labels")
    runner = _Runner(Path(spec["artifact_dir"]) / ONNX_FILES[output], int(spec["threads"]))
    runner.settings = {"precision": "fp32", "threads": int(spec["threads"]),
                       "fast path": "every node on the CPU execution provider (MLAS)"}
    return runner


def _kernel_kind(event: dict) -> str:
    """The operator type of a profiled node; the label tail's nodes (named ``vim_*``) are
    ``VIM tail``, and a convolution whose weight is ``[C, 1, k, k]`` on C channels is
    ``<op> depthwise``."""
    if event["name"].startswith("vim_"):
        return "VIM tail"
    op = event["args"].get("op_name", "?")
    shapes = [next(iter(s.values())) for s in event["args"].get("input_type_shape", [])]
    depthwise = "Conv" in op and len(shapes) > 1 and len(shapes[1]) == 4 and shapes[1][1] == 1 < shapes[0][1]
    return f"{op} depthwise" if depthwise else op


class _Runner:
    """A CPU session (all graph optimizations, ``threads`` intra-op, 1 inter-op); ``profile``
    gives ONNX Runtime's own per-node timings, summed by operator type (``_kernel_kind``)."""

    def __init__(self, path: Path, threads: int) -> None:
        self._path, self._threads = path, threads
        self._session = self._open()
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name

    def _open(self, profile_prefix: str | None = None):  # noqa: ANN202 - ort.InferenceSession
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if profile_prefix:
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        return ort.InferenceSession(str(self._path), options, providers=["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._session.run([self._output], {self._input: x})[0]

    def bound(self, x: np.ndarray) -> Callable[[], None]:
        """A run on ``x`` with the input and the output bound in place, no copies, as TVM's
        time evaluator runs a library (``pipeline.tune.crossing``)."""
        import onnxruntime as ort

        value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x, np.float32))  # holds the array
        binding = self._session.io_binding()
        binding.bind_ortvalue_input(self._input, value)
        binding.bind_output(self._output)
        self._session.run_with_iobinding(binding)  # ONNX Runtime allocates the output once, kept below
        binding.bind_ortvalue_output(self._output, binding.get_outputs()[0])
        self._bound = (binding, value)  # the binding reads the input's memory: keep both while this runner lives
        return lambda: self._session.run_with_iobinding(binding)

    def profile(self, x: np.ndarray, runs: int) -> list[dict]:
        session = self._open(str(self._path.with_name("ort-profile")))
        for _ in range(runs + 1):
            session.run([self._output], {self._input: x})
        trace = Path(session.end_profiling())
        events = json.loads(trace.read_text())
        # The first run (allocations, first-touch) is left out, as in the timed runs.
        first = min((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
        totals: dict[str, list[float]] = {}
        for event in events:
            if (event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time")
                    and event["ts"] >= first["ts"] + first["dur"]):
                entry = totals.setdefault(_kernel_kind(event), [0, 0.0])
                entry[0] += 1
                entry[1] += event["dur"] / 1e3  # microseconds
        trace.unlink(missing_ok=True)
        return sorted(({"kernel": k, "calls": c / runs, "ms": t / runs} for k, (c, t) in totals.items()),
                      key=lambda e: -e["ms"])
