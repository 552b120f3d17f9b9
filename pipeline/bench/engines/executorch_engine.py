"""ExecuTorch with the XNNPACK delegate on our network to logits: ``torch.export`` of the
BatchNorm-folded model, lowered with ``XnnpackPartitioner`` (fp32 configs only), run by the
ExecuTorch runtime's Python bindings. What ships is ``model.pte``.

fp32 throughout: the partitioner takes fp32 operators only, and the XNNPACK delegate's
graphs are built without ``XNN_FLAG_FORCE_FP16_INFERENCE``. What the partitioner leaves to
ExecuTorch's portable kernels is measured at prepare time (``DELEGATION``). Runs in the
environment of ``pipeline/bench/envs/mobile.txt``.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

PTE = "model.pte"
DELEGATION = "delegation.json"  # the partitioner's report, read back at load time; not shipped
# Events that wrap others (a whole run, one delegate call, one portable-kernel call).
WRAPPERS = frozenset({"Method::execute", "DELEGATE_CALL", "OPERATOR_CALL"})
# The delegation report's op names ("aten_mean_dim") made short ("mean").
OP_AFFIXES = re.compile(r"^(aten|dim_order_ops_)_|_(default|tensor|dim|start_step)$")


def prepare(spec: dict) -> dict:
    import torch
    from executorch.backends.xnnpack.partition.config.xnnpack_config import ConfigPrecisionType
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower

    from model.weights import load_model
    from pipeline.compile.fold import fold_batchnorm

    out = Path(spec["artifact_dir"])
    out.mkdir(parents=True, exist_ok=True)
    model = fold_batchnorm(load_model(spec["model"], spec["checkpoint"]))
    exported = torch.export.export(model, (torch.zeros(1, 3, *spec["input_size"]),))
    edge = to_edge_transform_and_lower(
        exported, partitioner=[XnnpackPartitioner(config_precisions=ConfigPrecisionType.FP32)])
    (out / DELEGATION).write_text(json.dumps(delegation_report(get_delegation_info(
        edge.exported_program().graph_module))))
    (out / PTE).write_bytes(edge.to_executorch().buffer)
    return {"files": [PTE], "counts": f"{PTE} (weights inside, fp32)"}


def delegation_report(info) -> dict:  # noqa: ANN001 - executorch DelegationInfo
    """The partitioner's result as plain data: partitions, node counts, and the operators
    left outside XNNPACK with their counts (``getitem`` is tuple plumbing, not work)."""
    table = info.get_operator_delegation_dataframe()
    outside = {row.op_type: int(row.occurrences_in_non_delegated_graphs) for row in table.itertuples()
               if row.op_type not in ("Total", "getitem") and row.occurrences_in_non_delegated_graphs}
    return {"partitions": info.num_delegated_subgraphs, "delegated": info.num_delegated_nodes,
            "outside": info.num_non_delegated_nodes, "outside_ops": outside}


def fast_path(report: dict) -> str:
    """One sentence: how much XNNPACK runs and which operators it leaves out."""
    ops = sorted(report["outside_ops"].items(), key=lambda kv: -kv[1])
    left = ", ".join(f"{OP_AFFIXES.sub('', op)} x{n}" for op, n in ops)
    return (f"{report['partitions']} XNNPACK partitions hold {report['delegated']} of "
            f"{report['delegated'] + report['outside']} graph nodes; portable kernels run {left or 'nothing'}")


def load(spec: dict) -> Callable[[np.ndarray], np.ndarray]:
    from executorch.extension.pybindings import portable_lib

    # The runtime's one thread pool serves XNNPACK; the bindings size it to the core count.
    portable_lib._unsafe_reset_threadpool(int(spec["threads"]))
    out = Path(spec["artifact_dir"])
    report = json.loads((out / DELEGATION).read_text())
    return _Runner(out / PTE, {
        "precision": "fp32 (XNNPACK fp32 partitioner configs; no fp16 inference flag)",
        "threads": portable_lib._threadpool_get_thread_count(),
        "fast path": fast_path(report),
    })


def event_kind(name: str) -> str:
    """XNNPACK's operator name without its instance number ("Convolution (NHWC, F32) DWConv
    #3" -> "Convolution (NHWC, F32) DWConv"); a portable kernel ("native_call_mean.out") as
    "portable mean"."""
    if name.startswith("native_call_"):
        return "portable " + name.removeprefix("native_call_").split(".")[0]
    return re.sub(r" #\d+$", "", name)


class _Runner:
    """The ``forward`` method of a loaded program; ``profile`` reads the ETDump of a second,
    instrumented program (the timed one stays uninstrumented)."""

    def __init__(self, path: Path, settings: dict) -> None:
        from executorch.runtime import Runtime

        self._path, self.settings = path, settings
        self._runtime = Runtime.get()
        self._forward = self._runtime.load_program(path).load_method("forward")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        return self._forward.execute([torch.from_numpy(x)])[0].numpy()

    def profile(self, x: np.ndarray, runs: int) -> list[dict]:
        """Per operator kind over ``runs`` runs after a first one: XNNPACK's per-operator
        events inside the delegate and the portable kernels outside it (times in ns)."""
        import torch
        from executorch.devtools.etdump.serialize import deserialize_from_etdump_flatcc

        program = self._runtime.load_program(self._path, enable_etdump=True, debug_buffer_size=0)
        forward = program.load_method("forward")
        for _ in range(runs + 1):
            forward.execute([torch.from_numpy(x)])
        with tempfile.TemporaryDirectory(prefix="etdump-") as tmp:
            program.write_etdump_result_to_file(f"{tmp}/run.etdp", f"{tmp}/debug.bin")
            dump = deserialize_from_etdump_flatcc(Path(f"{tmp}/run.etdp").read_bytes())
        totals: dict[str, list[float]] = {}
        for block in dump.run_data[-runs:]:  # the load block and the first run stay out
            for event in block.events:
                profiled = event.profile_event
                # XNNPACK's events carry their operator name as the delegate debug id.
                name = profiled and (profiled.name or profiled.delegate_debug_id_str)
                if not name or name in WRAPPERS:
                    continue
                entry = totals.setdefault(event_kind(name), [0, 0.0])
                entry[0] += 1
                entry[1] += (profiled.end_time - profiled.start_time) / 1e6
        return sorted(({"kernel": k, "calls": c / runs, "ms": t / runs} for k, (c, t) in totals.items()),
                      key=lambda e: -e["ms"])
