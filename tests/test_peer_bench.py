"""The peer benchmark (``make bench``) end to end on a small input: real PyTorch, ONNX Runtime,
OpenVINO, MNN, Paddle Inference (in ``.venv-ref``) and TVM workers, both columns (logits and
label map); structure of the results, never speed. The engines in pinned environments of
their own have tests of their own (tests/test_peer_*.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from model.upsample import vim_labels
from pipeline.bench.engines import ENGINES
from pipeline.bench.engines.ort_engine import append_label_tail
from pipeline.bench.report import MAX_LOGITS_DIFF

ROOT = Path(__file__).resolve().parents[1]
# Every engine of .venv and .venv-ref (the others' environments are their own tests' business).
SHARED_ENV_ENGINES = [e for e, spec in ENGINES.items() if spec.env in ("main", "ref")]


def bench(*args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "bench-peers", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def test_bench_end_to_end(tmp_path: Path, reference_dir: Path) -> None:
    out = tmp_path / "results"
    proc = bench("--model", "tiny", "--input-size", "64x64", "--repeat", "2", "--rounds", "2", "--settle", "0.1",
                 "--out", str(out), "--work", str(tmp_path / "work"), "--tuning-root", str(tmp_path / "tuning"),
                 "--checkpoint", str(reference_dir / "tiny.pdparams"), "--engines", ",".join(SHARED_ENV_ENGINES))
    assert proc.returncode == 0, proc.stderr
    latest = out / "latest-tiny.json"
    results = json.loads(latest.read_text())
    stem = out / f"{results['date']}-tiny"
    for suffix in (".json", ".md", ".png"):
        assert stem.with_suffix(suffix).is_file()
    assert stem.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(stem.with_suffix(".json").read_text()) == results
    assert not list(out.glob(".*")), "temporary files left behind"

    assert isinstance(results["machine"]["cpu"], str) and results["machine"]["cpu"]
    assert results["machine"]["cores"] >= 1
    assert results["machine"]["llvm_cpu"] and results["machine"]["vector_lanes"] in (4, 8, 16)
    assert results["command"].startswith("ppmseg bench-peers")
    assert results["input"]["size"] == [64, 64] and "motorcycle" in results["input"]["image"]
    assert results["threads"] == 1 and results["repeat"] == 2 and results["rounds"] == 2
    assert results["settle_s"] == 0.1
    assert "0.1 s pause before each engine's batch" in stem.with_suffix(".md").read_text()

    rows = {r["engine"]: r for r in results["rows"]}
    assert list(rows) == SHARED_ENV_ENGINES
    for name in ("torch", "onnxruntime", "openvino", "mnn", "paddle", "tvm-untuned"):
        r = rows[name]
        assert "error" not in r, r
        assert r["threads"] == 1 and r["repeats"] == r["logits_repeats"] == 2
        assert r["outputs"] == ["labels", "logits"]
        assert 0 < r["median_ms"] <= r["p90_ms"] and 0 < r["logits_median_ms"] <= r["logits_p90_ms"]
        assert r["peak_rss_mb"] > 0 and r["logits_peak_rss_mb"] > 0 and r["size_mb"] > 0 and r["size_counts"]
        assert 0.0 <= r["agreement"] <= 100.0 and r["logits_max_abs_diff"] >= 0
        assert r["settings"]["precision"] in ("fp32", "f32", "fp32 (precision=high)") and r["settings"]["threads"] == 1
        assert r["ratio_to_onnxruntime"] == pytest.approx(r["median_ms"] / rows["onnxruntime"]["median_ms"])
        assert r["logits_ratio_to_onnxruntime"] == pytest.approx(
            r["logits_median_ms"] / rows["onnxruntime"]["logits_median_ms"])
    assert rows["torch"]["agreement"] == 100.0 and rows["torch"]["logits_max_abs_diff"] == 0.0
    # TVM's `logits` function is the network `main` runs (pipeline.compile.tail).
    assert rows["tvm-untuned"]["logits_max_abs_diff"] <= MAX_LOGITS_DIFF
    assert_logits_runs_the_network_kernels_of_main(tmp_path / "work" / "tiny-host-64x64-t1" / "tvm-untuned")
    targets = {t["target"]: t for t in results["targets"]}
    logits_target = targets[f"logits within {MAX_LOGITS_DIFF:g} of PyTorch's (max abs difference)"]
    far = [e for e, r in rows.items() if (r["logits_max_abs_diff"] or 0.0) > MAX_LOGITS_DIFF]
    assert logits_target["met"] == (not far) and all(report_name(e) in logits_target["detail"] for e in far)
    # No database for this input size: the row is there, unmeasured, and says why.
    tuned = rows["tvm-tuned"]
    assert tuned["median_ms"] is None and tuned["agreement"] is None and "no MetaSchedule database" in tuned["note"]
    # Each lever's arm reads the database of the `make tune` that switches that lever.
    arms = {"tvm-tuned-nchw": ("LAYOUT=nchw", "-t1-nchw"), "tvm-tuned-fused": ("FUSE=on", "-t1-fused"),
            "tvm-tuned-focused": ("SEARCH=focused", "-t1-focused"),
            "tvm-tuned-fused-focused": ("FUSE=on SEARCH=focused", "-t1-fused-focused")}
    for engine, (option, work_dir) in arms.items():
        note = rows[engine]["note"]
        assert rows[engine]["median_ms"] is None and option in note and f"64x64{work_dir} " in note, note

    md = stem.with_suffix(".md").read_text()
    assert results["machine"]["cpu"] in md and results["command"] in md and "TVM tuned" in md
    assert f"LLVM cpu {results['machine']['llvm_cpu']}" in md and "### Where the time goes" in md
    assert "not measured" in md
    assert "| engine | logits median ms |" in md and "### Engine settings" in md
    assert "TVM tuned <= 0.8x the fastest other engine, network to logits" in md


def assert_logits_runs_the_network_kernels_of_main(artifact: Path) -> None:
    """The library's ``logits`` calls the kernels ``main`` calls before its label tail, one for one;
    ``main`` adds the tail's (the VIM kernel among them)."""
    from pipeline.bench.engines import tvm_engine

    x = np.load(artifact.parent / "input.npy")
    spec = {"artifact_dir": str(artifact), "threads": 1}
    kernels = {}
    for output in ("labels", "logits"):
        profile = tvm_engine.load({**spec, "output": output}).profile(x, 1)
        kernels[output] = {e["kernel"]: e["calls"] for e in profile if not e["kernel"].startswith("vm.")}
    tail = {k: c for k, c in kernels["labels"].items() if k not in kernels["logits"]}
    assert kernels["logits"] and all(kernels["labels"].get(k) == c for k, c in kernels["logits"].items())
    assert any("vim" in k for k in tail) and len(tail) < len(kernels["logits"]), tail


def report_name(engine: str) -> str:
    from pipeline.bench.report import NAMES

    return NAMES[engine]


def test_failing_engine_is_one_line_and_the_rest_is_written(tmp_path: Path, reference_dir: Path) -> None:
    proc = bench("--model", "tiny", "--input-size", "64x64", "--repeat", "1", "--engines", "torch,paddle",
                 "--out", str(tmp_path), "--work", str(tmp_path / "work"), "--ref-python", str(tmp_path / "nope"),
                 "--checkpoint", str(reference_dir / "tiny.pdparams"))
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: paddle:")]
    assert len(errors) == 1 and "make reference" in errors[0]
    rows = {r["engine"]: r for r in json.loads((tmp_path / "latest-tiny.json").read_text())["rows"]}
    assert rows["paddle"]["median_ms"] is None and rows["paddle"]["error"]
    assert rows["torch"]["median_ms"] > 0


def test_emulated_device_is_refused(tmp_path: Path) -> None:
    proc = bench("--device", "sd855", "--out", str(tmp_path), timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "emulated" in proc.stderr and "not comparable" in proc.stderr
    assert not list(tmp_path.iterdir())


def test_results_go_to_the_folder_of_the_cpu_the_tuned_builds_target(tmp_path: Path) -> None:
    from pipeline.bench.machine import machine_info, results_dir
    from pipeline.bench.peers import Settings
    from pipeline.common.paths import RESULTS
    from rpc.devices import load_profile

    cpu = str(load_profile("host").tvm_target().attrs["mcpu"])
    assert results_dir(tmp_path) == tmp_path / cpu and Settings().out == RESULTS / cpu
    assert machine_info()["llvm_cpu"] == cpu


@pytest.mark.parametrize("k", [1, 3, 40])
def test_onnx_vim_tail_matches_pytorch(k: int) -> None:
    """The VIM tail in ONNX operators gives PyTorch's VIM label map (``model.upsample``)."""
    rng = np.random.default_rng(k)
    c, h, w, size = 150, 5, 7, (37, 52)
    logits = rng.standard_normal((1, c, h, w)).astype(np.float32)
    classes = rng.choice(c, k, replace=False)
    logits[0, classes[rng.integers(0, k, (h, w))], np.arange(h)[:, None], np.arange(w)] += 8.0
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["logits"])], "tail",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, w])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, c, h, w])])
    model = append_label_tail(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), size, vim=True)
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    labels = session.run(["labels"], {"x": logits})[0]
    expected = vim_labels(torch.from_numpy(logits), size).numpy()
    assert labels.dtype == np.int32 and labels.shape == (1, *size)
    assert np.mean(labels == expected) > 0.999  # float rounding may flip exact near-ties only


def test_peak_memory_is_the_worker_own_not_its_parent() -> None:
    """A worker started by a process that holds 300 MB reports its own peak (Linux keeps
    ru_maxrss across exec, which made every worker report the orchestrator's)."""
    held = bytearray(300 * 1024 * 1024)
    held[:: 4096] = b"\1" * len(held[:: 4096])  # touch every page so it is resident
    code = "from pipeline.bench.worker import peak_rss_mb; print(peak_rss_mb())"
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                 timeout=60).stdout)
    assert 5 < child < 200, child
    del held


def test_missed_target_names_the_fastest_engine_and_the_kernels_that_differ() -> None:
    """The report's reading of a run where tuned TVM misses 0.8x the fastest engine of the
    logits column: which engine, the ratio, and the kinds of kernel that hold the difference."""
    from pipeline.bench.report import evaluate_targets

    def row(engine: str, labels: float | None, logits: float) -> dict:
        return {"engine": engine, "median_ms": labels, "logits_median_ms": logits, "agreement": 100.0,
                "logits_max_abs_diff": 1e-6}

    results = {"rows": [row("torch", 90.0, 80.0), row("onnxruntime", 30.0, 28.0), row("mnn", None, 18.0),
                        row("tvm-tuned", 20.0, 19.0)],
               "profiles": {},
               "logits_profiles": {
                   "tvm-tuned": [{"kernel": "fused_conv2d3_add2", "calls": 1, "ms": 12.0},
                                 {"kernel": "depthwise_conv2d_nchwc1", "calls": 1, "ms": 3.0}],
                   "mnn": [{"kernel": "Convolution", "calls": 1, "ms": 9.0},
                           {"kernel": "ConvolutionDepthwise", "calls": 1, "ms": 4.0}]}}
    targets = {t["target"]: t for t in evaluate_targets(results)}
    logits = targets["TVM tuned <= 0.8x the fastest other engine, network to logits"]
    assert logits["met"] is False and logits["fastest"] == "mnn" and logits["ratio"] == pytest.approx(19 / 18)
    assert "MNN (CPU)" in logits["detail"] and "convolution +3.00 ms" in logits["detail"]
    assert "depthwise" not in logits["detail"]  # TVM is ahead there: not where the difference is
    labels = targets["TVM tuned <= 0.8x the fastest other engine, label map (VIM)"]
    assert labels["met"] is True and labels["fastest"] == "onnxruntime"
