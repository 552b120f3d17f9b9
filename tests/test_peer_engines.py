"""The OpenVINO and MNN engines of the peer benchmark: conversion and correctness on a small
input through the real bench (real wheels, real conversions), float32 forced and reported,
and MNN's conversion kept offline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.bench.report import MAX_LOGITS_DIFF, MIN_AGREEMENT, _by_family, fastest_peer, markdown

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("torch", "onnxruntime", "openvino", "mnn")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, reference_dir: Path) -> dict:
    tmp = tmp_path_factory.mktemp("peers")
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "bench-peers", "--model", "tiny", "--input-size",
                           "64x64", "--repeat", "2", "--rounds", "2", "--settle", "0", "--out", str(tmp / "out"),
                           "--work", str(tmp / "work"), "--engines", ",".join(ENGINES),
                           "--checkpoint", str(reference_dir / "tiny.pdparams")],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads((tmp / "out" / "latest-tiny.json").read_text())


@pytest.mark.parametrize("engine", ["openvino", "mnn"])
def test_engine_converts_and_agrees_with_pytorch(results: dict, engine: str) -> None:
    row = {r["engine"]: r for r in results["rows"]}[engine]
    assert "error" not in row, row
    assert row["outputs"] == ["labels", "logits"]  # both run the ONNX VIM tail (Unique included)
    for key in ("median_ms", "logits_median_ms", "peak_rss_mb", "logits_peak_rss_mb", "size_mb"):
        assert row[key] > 0, key
    assert row["repeats"] == row["logits_repeats"] == 2
    assert row["agreement"] >= MIN_AGREEMENT
    assert 0 < row["logits_max_abs_diff"] <= MAX_LOGITS_DIFF  # a different engine, so not bit-equal
    assert row["settings"]["threads"] == 1


def test_float32_is_forced_and_reported(results: dict) -> None:
    rows = {r["engine"]: r for r in results["rows"]}
    assert rows["openvino"]["settings"]["precision"] == "f32"  # what the compiled model reports
    assert rows["openvino"]["settings"]["execution mode"] == "ACCURACY"
    assert rows["mnn"]["settings"]["precision"].startswith("fp32")
    text = markdown(results)
    assert "| OpenVINO (CPU) | f32 | 1 |" in text and "| MNN (CPU) | fp32 (precision=high) | 1 |" in text


def test_profiles_of_the_fastest_engines(results: dict) -> None:
    """OpenVINO's performance counters and MNN's per-operator callbacks, summed by kind; the
    fastest other engine of each column is profiled beside TVM's."""
    for output, key in (("labels", "profiles"), ("logits", "logits_profiles")):
        peer = fastest_peer(results, output)
        # MNN's label-map runner (its Module API) has no profiler: its logits runner's stands in
        assert peer in results[key] or (output == "labels" and peer in results["logits_profiles"]), (output, peer)
    for engine, key in (("openvino", "profiles"), ("openvino", "logits_profiles"), ("mnn", "logits_profiles")):
        profile = results[key].get(engine)
        if profile is None:  # profiled only when it is the fastest of its column
            continue
        families = _by_family(engine, profile)
        assert families.get("convolution", 0) > 0 and families.get("depthwise convolution", 0) > 0, families
        assert all(e["calls"] > 0 and e["ms"] >= 0 for e in profile)


def _tiny_onnx(path: Path) -> np.ndarray:
    """A one-convolution ONNX model; returns its weight."""
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["logits"], pads=[1, 1, 1, 1])], "conv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return w


def test_mnn_conversion_is_offline_and_the_guard_catches_the_command_line_wrapper(tmp_path: Path) -> None:
    """The conversion (the converter's library entry) tries no network access and starts no
    program; the same guard catches what ``mnnconvert``'s Python wrapper does on import (pip
    install of a logging SDK, blocked), so the check can fail. In a subprocess: audit hooks
    stay for the life of a process."""
    _tiny_onnx(tmp_path / "conv.onnx")
    code = """
import json, socket, sys
from pathlib import Path
from pipeline.bench.engines.mnn_engine import convert
from pipeline.bench.engines.offline import offline
convert(Path(sys.argv[1]), Path(sys.argv[2]))  # raises if the converter tried anything
with offline() as wrapper:
    try:
        import MNN.tools.mnnconvert  # the command line's wrapper, which imports the usage logger
    except Exception:
        pass
with offline() as lookup:
    try:
        socket.getaddrinfo("pypi.org", 443)
    except PermissionError:
        pass
print(json.dumps({"wrapper": wrapper, "lookup": lookup}))
"""
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "conv.onnx"), str(tmp_path / "conv.mnn")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    tried = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (tmp_path / "conv.mnn").stat().st_size > 0
    assert any(t.startswith("os.system") and "pip install" in t for t in tried["wrapper"]), tried
    assert tried["lookup"] and tried["lookup"][0].startswith("socket.getaddrinfo('pypi.org'"), tried


def test_openvino_reads_compiles_and_runs_offline(tmp_path: Path) -> None:
    """What the OpenVINO engine does (read the ONNX file, compile for the CPU, infer) tries no
    network access and starts no program (its telemetry lives in its conversion tools)."""
    w = _tiny_onnx(tmp_path / "conv.onnx")
    code = """
import json, sys
import numpy as np
from pipeline.bench.engines.offline import offline
with offline() as tried:
    from pipeline.bench.engines.openvino_engine import _Runner
    from pathlib import Path
    run = _Runner(Path(sys.argv[1]), 1)
    y = run(np.ones((1, 3, 8, 8), np.float32))
print(json.dumps({"tried": tried, "centre": y[0, :, 4, 4].tolist(), "precision": run.settings["precision"]}))
"""
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "conv.onnx")], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["tried"] == [] and out["precision"] == "f32"
    assert np.allclose(out["centre"], w.sum(axis=(1, 2, 3)), atol=1e-5)  # a 3x3 window of ones, no padding
