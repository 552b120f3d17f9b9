"""Tuning through a real loopback tracker: tiny budgets, host and emulated SD855, resume."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import relax

from pipeline.bench.engines.ort_engine import bound_run
from pipeline.deploy.runtime import load
from pipeline.tune.job import TuneRequest, run_tune
from schedules.tuning import RECORDS, WORKLOADS, build, database_at, record_target
from tests.conftest import private_rpc_state, run_cli

SIZE = (64, 96)
REPORT_KEYS = ("model", "device", "emulated", "threads", "trials")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """Private tracker state, records store (empty: runs begin from scratch unless a test
    fills it) and work/output roots; local mode (no user tracker)."""
    root = tmp_path_factory.mktemp("tune")
    with private_rpc_state(root / "rpc"), pytest.MonkeyPatch.context() as env:
        env.setenv("PPMSEG_RECORDS", str(root / "store"))
        yield root / "work", root / "build"


def _tune(dirs, **kw):
    work, out = dirs
    logs: list[str] = []
    with contextlib.redirect_stdout(io.StringIO()) as console:
        result = run_tune(TuneRequest(**{"model": "tiny", "input_size": SIZE, **kw}), log=logs.append, work_root=work,
                          out_root=out, rounds=3, peer=bound_run)
    # MetaSchedule's own logs go to the work directory, in every tuning call (both phases).
    assert "[INFO]" not in console.getvalue()
    return result, logs


def _records(work_dir: Path) -> list[str]:
    return [line for line in (work_dir / RECORDS).read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def host_run(dirs):
    return _tune(dirs, device="host", trials=8)


def test_host_tune_produces_agreeing_libraries_and_report(host_run):
    result, logs = host_run
    report = json.loads((result.artifact / "report.json").read_text())
    for key in REPORT_KEYS:
        assert key in report
    assert report["device"] == "host" and report["emulated"] is False and report["threads"] == 1
    assert report["untuned"]["median_ms"] > 0 and report["tuned"]["median_ms"] > 0
    assert report["trials"] == len(_records(Path(report["work_dir"]))) >= 8
    assert report["checks"]["tuned_vs_untuned"]["differ_outside_ties"] == 0
    assert sum(t["trials"] for t in report["tasks"]) == report["trials"]
    assert Path(report["work_dir"]).name == "tiny-host-64x96-t1" and result.artifact.name == "tuned-tiny-host-64x96-t1"
    # The shipped graph is the blocked one, in the tasks tuned as in the libraries built.
    assert any("nchwc" in t["task"] for t in report["tasks"])
    assert re.fullmatch(r"NCHW\d+c", json.loads((result.artifact / "meta.json").read_text())["layout"])
    # Where each tuned kernel that pads its input computes the padding (None: no padding or
    # untuned; with 8 trials the tuned kernels may pad nothing: tests/test_padding.py covers it).
    assert {t["padding"] for t in report["tasks"]} <= {None, "inlined", "per tile", "whole"}
    assert all(t["tuned"] for t in report["tasks"] if t["padding"])
    padded = any(t["padding"] for t in report["tasks"])
    assert ("Zero padding of the" in (result.artifact / "report.md").read_text()) == padded
    # The latency profile: every part of the network in both builds, and the ablation's two plain tails.
    parts = [r["part"] for r in report["profile"]]
    assert parts == ["stem_stage1", "stage2", "stage3", "sea1", "stage4", "sea2", "aam", "head", "tail",
                     "tail_interpolate", "tail_interpolate_stock"]
    a = report["ablation"]
    assert a["interpolate_ms"] > 0 and set(a["tails_ms"]) == {"vim", "interpolate", "interpolate_stock"}
    # The three builds timed interleaved, each comparison with its interval.
    m = report["measurement"]
    assert m["rounds"] == 3 and m["order"] == "rotating" and m["pinned_cpus"] == [max(os.sched_getaffinity(0))]
    assert len(m["load_avg_before"]) == len(m["load_avg_after"]) == 3
    for timed in (report["untuned"], report["tuned"], a["interpolate"]):
        assert len(timed["rounds_ms"]) == 3 and timed["repeats"] == 3
    for key in ("tuned_vs_untuned", "vim_vs_interpolate"):
        d = report["comparisons"][key]
        assert d["low"] <= d["ratio"] <= d["high"] and d["within_noise"] == (d["low"] <= 1 <= d["high"])
    md = (result.artifact / "report.md").read_text()
    assert "Measured interleaved: 3 rounds" in md and "The whole inference, interleaved:" in md
    # Where the run's time went: the search's parts add up to MetaSchedule's wall time.
    spent = report["tuning_time"]
    s = spent["search"]
    assert s["candidates"] == report["new_trials"] and s["build_batches"] >= 1
    assert min(s["build_s"], s["measure_wait_s"], s["cost_model_s"]) > 0
    assert s["build_s"] + s["measure_wait_s"] + s["cost_model_s"] + s["search_s"] == pytest.approx(s["wall_s"], abs=0.5)
    assert s["wall_s"] <= spent["phases_s"]["search"] + 0.1 <= report["elapsed_s"]
    assert set(spent["phases_s"]) == {"import", "untuned_tasks", "warm_start", "search", "builds", "measure", "profile",
                                      "onnxruntime"}
    assert report["warm_start"] is None and "Begun from scratch" in md
    assert "Where this run's" in md and "waiting for the device's measurements" in md
    # The tuning curve: the best-kernels sum never rises with trials; end to end untuned at 0, tuned now.
    best = report["curve"]["best_kernels_ms"]
    assert best[0][0] == 0 and best[-1][0] == report["trials"]
    assert all(later[1] <= earlier[1] + 1e-9 for earlier, later in zip(best, best[1:], strict=False))
    assert report["curve"]["end_to_end_ms"] == [[0, report["untuned"]["median_ms"]],
                                                [report["trials"], report["tuned"]["median_ms"]]]
    # ... and against wall time: when the search's database held how many records.
    clock = report["curve"]["wall_s"]
    assert clock[-1][0] == report["trials"] and 0 < clock[0][1] <= clock[-1][1] <= report["elapsed_s"]
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(clock, clock[1:], strict=False))
    assert all(r["untuned_ms"] > 0 and r["tuned_ms"] > 0 for r in report["profile"])
    assert "Latency by part of the network" in (result.artifact / "report.md").read_text()
    g = report["gflops"]
    assert g["network_gflop"] > 0 and g["peak_gflops"] > 0 and g["tuned_gflops"] > 0
    for name in ("report.md", "report.png", "model.so", "untuned/model.so", "interpolate/model.so"):
        assert (result.artifact / name).is_file(), name
    meta = json.loads((result.artifact / "meta.json").read_text())
    assert meta["tuned"] is True and meta["database"] == report["work_dir"]
    # The tuned and untuned libraries give the same labels here too.
    x = np.random.default_rng(0).standard_normal((1, 3, *SIZE)).astype(np.float32)
    assert np.array_equal(load(result.artifact)(x), load(result.artifact / "untuned")(x))
    assert any("trials" in line for line in logs)
    # One input size: no other entry to time (and no session opened for none).
    assert report["entries"] == [] and not any("of the untuned and tuned libraries" in line for line in logs)
    assert report["memory"] is None


def test_the_report_says_when_a_library_first_matched_onnxruntime(host_run, tmp_path):
    """ONNX Runtime timed in turns with libraries built from the database as it stood at
    earlier points of the curve: whatever the timings, the answer is the first point probed
    no slower, and the point before it was probed slower (or it is the first)."""
    result, _ = host_run
    report = result.report
    c = report["onnxruntime"]
    assert c["measured"] is True and c["threads"] == 1 and c["onnxruntime_ms"] > 0
    points = [n for n, _ms in report["curve"]["best_kernels_ms"] if n > 0]
    probes = {p["records"]: p["tvm_ms"] <= p["onnxruntime_ms"] for p in c["probes"]}
    assert set(probes) <= set(points) and points[-1] in probes and len(probes) == len(c["probes"])
    if c["records"] is None:
        assert list(probes.items()) == [(points[-1], False)]
    elif c["records"] > 0:
        i = points.index(c["records"])
        assert probes[c["records"]] and (i == 0 or probes[points[i - 1]] is False)
        assert c["minutes"] is None or 0 < c["minutes"] * 60 <= report["elapsed_s"]
    assert "ONNX Runtime (same network and VIM tail" in (result.artifact / "report.md").read_text()
    # A library at an earlier point is built from the database's first records, as measured.
    work = Path(report["work_dir"])
    assert _records(database_at(work, 3, tmp_path / "db")) == _records(work)[:3]


def test_several_input_sizes_are_tuned_in_one_run(dirs, host_run):
    """``--input-size 64x96,96x64``: one work directory and one report, the kernels of both
    sizes in the search, and a tuned library whose every entry agrees with the untuned one's."""
    result, logs = _tune(dirs, device="host", trials=12, other_sizes=((96, 64),), profile=False)
    report = result.report
    assert report["input_sizes"] == [[64, 96], [96, 64]] and report["input_size"] == [64, 96]
    assert Path(report["work_dir"]).name == "tiny-host-64x96+96x64-t1"
    assert "INPUT=64x96,96x64" in report["command"]
    assert len(report["tasks"]) > len(host_run[0].report["tasks"])  # the second size's own kernels
    assert report["checks"]["tuned_vs_untuned"]["differ_outside_ties"] == 0
    # The second size timed and checked too, untuned against tuned.
    [entry] = report["entries"]
    assert entry["function"] == "main_96x64" and entry["input_size"] == [96, 64]
    assert entry["untuned_ms"] > 0 and entry["tuned_ms"] > 0
    assert entry["checks"]["tuned_vs_untuned"]["differ_outside_ties"] == 0
    md = (result.artifact / "report.md").read_text()
    assert "| 96x64 | `main_96x64` |" in md and "(the task table: every input size's)" in md
    # Memory, each measured in its own process. At 64x96 a second entry's activations (about
    # 0.1 MB) are below the noise of resident memory, so which is larger is not asserted here.
    memory = report["memory"]
    assert memory["default_entry_mb"] > 0 and memory["all_entries_mb"] > 0
    assert memory["library_mb"] == round((result.artifact / "model.so").stat().st_size / 2**20, 1)
    assert f"every entry in turn {memory['all_entries_mb']:.0f} MB" in md
    tuned, untuned = load(result.artifact), load(result.artifact / "untuned")
    assert [e.size for e in tuned.entries] == [(64, 96), (96, 64)]
    rng = np.random.default_rng(1)
    for entry in tuned.entries:
        x = rng.standard_normal(entry.input_shape).astype(np.float32)
        assert np.array_equal(tuned(x), untuned(x)), entry
    # The ablation's library is the default size's alone.
    assert [e["input_shape"] for e in json.loads((result.artifact / "interpolate" / "meta.json").read_text())[
        "entries"]] == [[1, 3, 64, 96]]


def test_resume_measures_only_new_candidates(dirs, host_run):
    first, _ = host_run
    work_dir = Path(first.report["work_dir"])
    before = _records(work_dir)
    result, logs = _tune(dirs, device="host", trials=16)
    after = _records(work_dir)
    assert after[: len(before)] == before  # earlier records untouched
    assert result.report["new_trials"] == len(after) - len(before) > 0
    assert sum(t["trials"] for t in result.report["tasks"]) <= 16 + 8  # counts what was there (a round of slack)
    assert [n for n, _ms in result.report["curve"]["end_to_end_ms"]] == [0, len(before), len(after)]
    assert any("resuming" in line for line in logs)
    traces = [json.dumps(json.loads(r)[1]) for r in after]
    workloads = [json.loads(r)[0] for r in after]
    assert len(set(zip(workloads, traces, strict=True))) == len(after), "a candidate was measured twice"


def test_list_and_compare_commands(dirs, host_run, tmp_path):
    result, _ = host_run
    exe = str(Path(sys.executable).with_name("ppmseg"))
    out = subprocess.run([exe, "report", "--no-measure", str(result.artifact), str(result.artifact / "report.json"),
                          str(result.artifact)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "tuned median ms (its run)" in out.stdout and "| A | B | C |" in out.stdout
    assert "measured in separate runs" in out.stdout and "--no-measure" in out.stdout
    # The report on disk, not the fixture's: the resume test may have re-run this work directory.
    command = json.loads((result.artifact / "report.json").read_text())["command"]
    assert f"- C: `{command}`" in out.stdout
    one = subprocess.run([exe, "report", str(result.artifact)], capture_output=True, text=True, timeout=120)
    assert one.returncode == 2 and "at least two reports" in one.stderr
    bad = subprocess.run([exe, "report", str(tmp_path), str(result.artifact)], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 1 and "no such report" in bad.stderr


def test_compare_times_two_identical_libraries_interleaved_and_calls_them_equal(host_run, tmp_path):
    """The tuned library and a copy of it (the same database's build): timed against each other
    now, on a server pinned to its core, they are equal within noise."""
    result, _ = host_run
    copy = tmp_path / "copy"
    shutil.copytree(result.artifact, copy)
    report = json.loads((copy / "report.json").read_text())
    (copy / "report.json").write_text(json.dumps({**report, "artifact": str(copy)}))
    out = run_cli("report", "--rounds", "60", str(result.artifact), str(copy))
    assert "tuned median ms (interleaved, now)" in out.stdout and "Measured interleaved: 60 rounds" in out.stdout
    assert f"pinned to core {max(os.sched_getaffinity(0))}" in out.stdout
    assert "- B and A are equal within noise (±" in out.stdout, out.stdout


def test_a_database_tuned_for_another_target_is_refused(host_run, tmp_path):
    """MetaSchedule applies a workload's best record whatever target it was measured on: a
    work directory brought from another machine is refused by the tuning job and by builds."""
    source = Path(host_run[0].report["work_dir"])
    copy = tmp_path / "work" / source.name
    shutil.copytree(source, copy)
    records = [json.loads(line) for line in _records(copy)]
    for _index, record in records:
        record[2]["mcpu"] = "another-cpu"
    (copy / RECORDS).write_text("".join(json.dumps(r) + "\n" for r in records))
    before = (copy / RECORDS).read_bytes()
    out = run_cli("tune", "--input-size", f"{SIZE[0]}x{SIZE[1]}", "--trials", "16", "--no-profile",
                  "--work-root", str(tmp_path / "work"), "--out-root", str(tmp_path / "build"), check=False)
    *notes, error = out.stderr.strip().splitlines()
    assert out.returncode == 1 and all(n.startswith("note: no --weights") for n in notes), out.stderr
    assert re.fullmatch(r"Error: .* tuned for llvm .*-mcpu=another-cpu.*, not for llvm .*-mcpu=\S+ .*", error)
    assert (copy / RECORDS).read_bytes() == before and not (tmp_path / "build").exists()
    x = relax.Var("x", relax.TensorType((4,), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        bb.emit_func_output(bb.emit(relax.op.add(x, x)))
    with pytest.raises(ValueError, match="another-cpu"):
        build(bb.get(), tvm.target.Target(host_run[0].report["target"]), copy)


def test_a_run_begins_from_exported_records_remeasured_on_the_device(dirs, host_run, tmp_path):
    """Export a finished run's records, import them into the (test's) store, and tune again in
    a fresh work directory: the stored schedules are re-measured on the device first, every
    one of them with this device's times, and the report says where they came from."""
    from schedules import store, tuning

    first = host_run[0].report
    shared = tmp_path / "team.json.gz"
    assert run_cli("records", "export", first["work_dir"], "-o", str(shared)).stdout.strip() == str(shared)
    assert shared.stat().st_size < 200_000
    imported = Path(run_cli("records", "import", str(shared)).stdout.strip())
    assert imported.parent == Path(os.environ["PPMSEG_RECORDS"]) and imported.name.startswith("host-")
    listed = run_cli("records", "list").stdout
    assert imported.name in listed and "usable" in listed and "not usable" not in listed
    stored = store.load(imported).records
    assert stored.keys() == store.best_records(first["work_dir"]).keys()

    work, out = dirs
    result, logs = _tune((work / "warm", out / "warm"), device="host", trials=12, profile=False)
    warm = result.report["warm_start"]
    assert any("warm start: re-measuring" in line for line in logs)
    assert warm["files"] == [imported.name.removesuffix(".json.gz")]
    # Every stored kernel exactly; kernels at other resolutions with the same channels through a sibling.
    assert warm["tasks"] - warm["transferred"] == len(stored) and 0 < warm["remeasured"] <= 2 * warm["tasks"]
    assert warm["committed"] == {warm["files"][0]: warm["remeasured"]}
    # The wall-time curve marks when re-measuring ended, so the ONNX Runtime moment can fall there.
    assert result.report["curve"]["wall_s"][0][0] == warm["remeasured"]
    # The re-measured records come first in the new database, measured for this target.
    new = _records(Path(result.report["work_dir"]))
    assert result.report["trials"] == len(new) >= warm["remeasured"]
    assert tuning.record_targets(result.report["work_dir"]) == tuning.record_targets(first["work_dir"])
    workloads = [json.loads(line)[0] for line in (Path(result.report["work_dir"]) / WORKLOADS).read_text().splitlines()]
    assert {workloads[json.loads(r)[0]] for r in new[: warm["remeasured"]]} <= stored.keys()
    assert "Begun from the records store" in (result.artifact / "report.md").read_text()
    assert result.report["checks"]["tuned_vs_untuned"]["differ_outside_ties"] == 0


def test_a_run_at_another_input_size_begins_from_the_siblings_records(dirs, host_run, tmp_path):
    """The store has records for 64x96 only: a run at 96x64 finds none of its kernels there, so
    they start from their siblings' schedules (the same kernel at the other shapes), replayed on
    their shapes and re-measured, and its library is correct."""
    from schedules import store

    first = host_run[0].report
    stored = store.load(Path(run_cli("records", "import", run_cli(
        "records", "export", first["work_dir"], "-o", str(tmp_path / "team.json.gz")).stdout.strip()).stdout.strip()))
    assert stored.kernels.keys() == stored.records.keys()

    work, out = dirs
    result, logs = _tune((work / "other-size", out / "other-size"), device="host", trials=12, profile=False,
                         input_size=(96, 64))
    warm, report = result.report["warm_start"], result.report
    assert warm["transferred"] > 0 and warm["tasks"] - warm["transferred"] <= len(stored.records)
    assert 0 < warm["remeasured"] <= 2 * warm["tasks"]
    new = _records(Path(report["work_dir"]))
    workloads = [json.loads(line)[0] for line in (Path(report["work_dir"]) / WORKLOADS).read_text().splitlines()]
    own = {workloads[json.loads(r)[0]] for r in new[: warm["remeasured"]]} - stored.records.keys()
    assert 0 < len(own) <= warm["transferred"]  # 96x64's own kernels, re-measured from their siblings' schedules
    assert "nearest sibling's" in (result.artifact / "report.md").read_text()
    assert report["checks"]["tuned_vs_untuned"]["differ_outside_ties"] == 0


def test_every_kernel_at_one_input_size_has_its_sibling_at_another():
    """Over the whole network: the kernels of Tiny at 96x64 that 64x96 does not share find, of
    64x96's kernels, the same kernel transposed (argument shapes with height and width swapped)
    or one as near; a few find none (where a side of 1 simplifies the kernel's loops, common at
    this small size, or the attention's flattened shapes differ in more than H and W: 16 of 83)."""
    from model.weights import load_model
    from pipeline.compile.build import build_spec, import_network, with_tail
    from rpc.linkers import build_config
    from schedules import siblings, tuning

    model = load_model("tiny", None)
    config = build_config("host", mode="local", threads=1, check_linker=False)
    target = tvm.target.Target(build_spec("tiny", model, SIZE, config, None).target)
    kernels = {}
    for size in (SIZE, SIZE[::-1]):
        spec = build_spec("tiny", model, size, config, None)
        tasks = tuning.extract_tasks(with_tail(import_network(model, spec.input_shape, "torch", Path()), spec), target)
        kernels[size] = {tuning.workload_key(t): (siblings.family(m), siblings.arg_shapes(m))
                         for t in tasks for m in t.dispatched[:1]}
    a, b = kernels[SIZE], kernels[SIZE[::-1]]
    assert siblings.distance([[1, 16, 6, 4, 16]], [[1, 32, 6, 4, 16]]) == float("inf")  # other channels: not a sibling
    assert len({fam for fam, _s in a.values()}) > len(a) / 3  # kernels are told apart
    own = {key: v for key, v in b.items() if key not in a}
    found = {key: siblings.closest(shapes, {k: s for k, (f, s) in a.items() if f == fam})
             for key, (fam, shapes) in own.items()}
    assert sum(v is None for v in found.values()) <= len(own) / 4
    for key, sibling in found.items():
        shapes = own[key][1]
        assert sibling is None or siblings.distance(shapes, a[sibling][1]) <= siblings.distance(
            shapes, _transposed(shapes)) + 1e-9


def test_base_finds_its_layers_in_tinys_records():
    """Base at 512x512 against the store's Tiny one-thread file: the kernels Tiny lacks take the
    same layer of Tiny (a sibling of the same family, other channels), and the stored schedule
    replays on most of them. Within one model, other channels are never a sibling."""
    from model.weights import load_model
    from pipeline.compile.build import build_spec, network_module
    from rpc.linkers import build_config
    from schedules import siblings, store, tuning, warm

    tiny = store.load(store.STORE / "host-znver5-tiny-512x512-t1.json.gz")
    model = load_model("base", None)
    config = build_config("host", mode="local", threads=1, check_linker=False)
    spec = build_spec("base", model, (512, 512), config, None)
    tasks = tuning.extract_tasks(network_module(model, spec, Path()), tvm.target.Target(spec.target))
    prior = warm.Prior.gather([tiny], tasks, "base")
    exact = len(prior.records) - len(prior.transferred)
    assert 0 < exact < len(tasks) / 4 < len(prior.transferred)  # the layers the variants share, then siblings
    assert len(prior.records) >= 0.9 * len(tasks)
    replayed = [t for t in tasks if prior.for_task(t) and warm.candidate(t, prior.for_task(t)[0][0]) is not None]
    assert len(replayed) >= 0.8 * len(tasks)
    # Had the file been Base's own, only siblings in other H and W would count: far fewer.
    assert len(warm.Prior.gather([tiny], tasks, "tiny").transferred) < len(prior.transferred) / 2
    assert siblings.distance([[1, 16, 6, 4, 16]], [[1, 32, 6, 4, 16]], free=None) < float("inf")


def _transposed(shapes: list[list[int]]) -> list[list[int]]:
    """Shapes with the two spatial dimensions (third and fourth) swapped."""
    return [[*s[:2], s[3], s[2], *s[4:]] if len(s) >= 4 else s for s in shapes]


def test_records_of_an_emulator_or_another_cpu_are_never_used(host_run, tmp_path):
    from schedules import store

    first = host_run[0].report
    work = tmp_path / "emulated"
    shutil.copytree(first["work_dir"], work)
    (work / "report.json").write_text(json.dumps({**first, "emulated": True}))
    out = run_cli("records", "export", str(work), "-o", str(tmp_path / "x.json.gz"), check=False)
    assert out.returncode == 1 and "measured under qemu" in out.stderr and not (tmp_path / "x.json.gz").exists()
    # A file from a CPU with an instruction this one lacks is listed as unusable, and not used.
    target = tvm.target.Target(record_target(first["work_dir"]))
    f = store.load(Path(run_cli("records", "export", first["work_dir"], "-o", str(tmp_path / "y.json.gz"))
                        .stdout.strip()))
    wanted, have = dict(target.export()), set(store.features(target))
    assert f.usable_for(wanted, have) is None
    assert "lacks" in store.RecordFile(**{**f.__dict__, "features": f.features | {"sve2"}}).usable_for(wanted, have)
    assert "TVM" in store.RecordFile(**{**f.__dict__, "tvm": "0.1"}).usable_for(wanted, have)
    bad = tmp_path / "bad.json.gz"
    bad.write_bytes(b"not gzip")
    out = run_cli("records", "import", str(bad), check=False)
    assert out.returncode == 1 and "is not a records file" in out.stderr


def test_emulated_sd855_tune_is_correct(dirs):
    result, logs = _tune(dirs, device="sd855", trials=4)
    report = result.report
    assert report["emulated"] is True and report["device"] == "sd855"
    assert report["checks"]["tuned_vs_untuned"]["differ_outside_ties"] == 0
    assert json.loads((result.artifact / "meta.json").read_text())["arch"] == "aarch64"
    assert any("EMULATED" in line for line in logs)
    assert "EMULATED" in (result.artifact / "report.md").read_text()
    assert len(report["profile"]) == 11 and report["gflops"]["peak_gflops"] is None  # no peak for an emulator
    assert report["onnxruntime"]["measured"] is False and "not this machine" in report["onnxruntime"]["why"]


def _export_naming_the_worker(mod) -> str:  # noqa: ANN001
    return f"{os.getpid()}:{type(mod).__name__}"


def test_builder_keeps_its_workers_across_batches_and_reports_failures():
    import tvm
    from tvm import te
    from tvm.s_tir import meta_schedule as ms

    from schedules.tuning import PooledBuilder

    a, n = te.placeholder((16,), name="a"), te.var("n")
    mod = tvm.IRModule({"main": te.create_prim_func([a, te.compute((16,), lambda i: a[i] * 2)])})
    # n is not an argument: the build fails in the worker.
    broken = tvm.IRModule({"main": te.create_prim_func([a, te.compute((16,), lambda i: a[i] * n.astype("float32"))])})
    builder = PooledBuilder(_export_naming_the_worker, workers=1)
    try:
        host = tvm.target.Target("llvm")
        batches = [builder.build([ms.builder.BuilderInput(mod, host)] * 2) for _ in range(2)]
        failed = builder.build([ms.builder.BuilderInput(broken, host)])
    finally:
        builder.close()
    paths = [r.artifact_path for batch in batches for r in batch]
    assert all(r.error_msg is None for batch in batches for r in batch)
    assert len({p.split(":")[0] for p in paths}) == 1 and int(paths[0].split(":")[0]) != os.getpid()
    assert failed[0].artifact_path is None and "not passed in as API arguments" in failed[0].error_msg


def test_progress_weighs_each_kernel_by_its_calls_as_the_report_does():
    from schedules.tuning import TuneProgress

    p = TuneProgress(tasks=3, task_names=["a", "b", "c"], calls={"a": 3, "b": 1, "c": 2}, best_ms={"a": 2.0, "b": 1.0})
    assert p.best_kernels_ms() == 7.0  # c not measured yet


def test_progress_counts_measurements_before_metaschedule_gathers_them():
    """The progress line's "measured" follows the device (each measurement as it ends), not
    MetaSchedule, which hands a batch's results over only when its scheduler returns to the task."""
    import concurrent.futures

    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.runner.rpc_runner import RPCRunnerFuture

    from pipeline.tune.progress import ProgressPrinter
    from schedules.tuning import DeviceWatchRunner

    @derived_object
    class Device(ms.runner.PyRunner):  # measures each candidate on a thread, as RPCRunner's pool does
        def __init__(self) -> None:
            self.pool = concurrent.futures.ThreadPoolExecutor(1)

        def run(self, runner_inputs: list) -> list:
            return [RPCRunnerFuture(self.pool.submit(lambda: [1e-3]), 10) for _ in runner_inputs]

    lines: list[str] = []
    progress = ProgressPrinter(lines.append, 0.0)
    runner = DeviceWatchRunner(Device(), lambda: True, 1, on_batch=progress.on_batch)
    progress.follow(runner.measured)
    progress.start(4)
    futures = runner.run([ms.runner.RunnerInput("candidate.so", "cpu", []) for _ in range(4)])
    assert "trials sent 4/4  measured 0 " in lines[-1]
    assert [[float(s) for s in f.result().run_secs] for f in futures] == [[1e-3]] * 4
    progress.on_update(None)  # MetaSchedule has reported no task yet
    assert "trials sent 4/4  measured 4  tasks measured 0 " in lines[-1]
