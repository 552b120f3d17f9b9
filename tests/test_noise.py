"""Reports that stay true on a noisy machine: libraries timed interleaved on a pinned server, and
a difference inside the noise said to be so (``pipeline.common.noise``). No timing threshold is
asserted: only the sign of a difference many times the noise, and equality of identical builds."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import psutil
import pytest

from pipeline.common.noise import LEVEL, _order_interval, difference, rotations
from tests.conftest import private_rpc_state

SIZE = (64, 64)


def test_the_interval_is_the_sign_tests_and_as_tight_as_the_level_allows() -> None:
    from math import comb

    for n in range(3, 40):
        k, confidence = _order_interval(n, LEVEL)
        exact = 1 - 2 * sum(comb(n, i) for i in range(k)) / 2**n
        assert confidence == pytest.approx(exact)
        assert confidence >= LEVEL or k == 1  # too few rounds: the whole range, its confidence said
        wider = 1 - 2 * sum(comb(n, i) for i in range(k + 1)) / 2**n
        assert k + 1 > (n + 1) // 2 or wider < LEVEL  # one order statistic further in would miss the level


def test_drift_shared_by_a_round_is_not_a_difference() -> None:
    """The machine slowing down by up to 40% from round to round, both builds alike: equal
    within noise; the same drift with one build 6% slower: slower, with the right sign."""
    rng = np.random.default_rng(3)
    drift = rng.uniform(1.0, 1.4, 12)
    a = [list(20 * d * rng.normal(1, 0.005, 3)) for d in drift]
    b = [list(20 * d * rng.normal(1, 0.005, 3)) for d in drift]
    same = difference("A", "B", a, b)
    assert same.within_noise and "equal within noise (±" in same.sentence()
    slow = difference("C", "B", [[v * 1.06 for v in r] for r in a], b)
    assert not slow.within_noise and slow.low > 1 and "C is 6." in slow.sentence() and "slower" in slow.sentence()
    fast = difference("B", "U", b, [[v * 3 for v in r] for r in a])
    assert fast.high < 1 and "3.00x faster" in fast.sentence()


def test_rounds_rotate_the_order() -> None:
    orders = rotations(["u", "t", "p"], 12)
    assert orders[:3] == [["u", "t", "p"], ["t", "p", "u"], ["p", "u", "t"]]
    assert all(sum(o[0] == name for o in orders) == 4 for name in "utp")


@pytest.fixture(scope="module")
def libraries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Untuned Tiny 64x64 libraries: VIM, a byte-identical copy of it, and the same network with
    a deliberately slower tail (upsampling every class with stock ops at TVM's default schedule)."""
    from model.weights import load_model
    from pipeline.compile.build import build_library, build_spec, export, import_network, with_tail
    from rpc.linkers import build_config

    out = tmp_path_factory.mktemp("noise-libs")
    model = load_model("tiny", None)
    config = build_config("host", mode="local", threads=1, check_linker=False)
    spec = build_spec("tiny", model, SIZE, config, None)
    network = import_network(model, spec.input_shape, "torch", out / "model.onnx")
    paths = {}
    for name, tail in (("vim", "vim"), ("stock", "interpolate-stock")):
        paths[name] = out / f"{name}.so"
        export(build_library(with_tail(network, spec, tail), spec.target), paths[name], config.linker)
    paths["vim-copy"] = out / "vim-copy.so"
    shutil.copyfile(paths["vim"], paths["vim-copy"])
    return paths


def test_identical_builds_are_equal_within_noise_and_a_slower_tail_is_slower(libraries, tmp_path: Path) -> None:
    from pipeline.tune.measure import measure_interleaved
    from rpc.connect import connect_device

    x = np.random.default_rng(0).standard_normal((1, 3, *SIZE)).astype(np.float32)
    with private_rpc_state(tmp_path / "rpc"):
        device = connect_device("host", None, 1, log=lambda _m: None)
        try:
            timings, labels, conditions = measure_interleaved(device, libraries, x, rounds=60)
        finally:
            device.release()
    assert np.array_equal(labels["vim"], labels["vim-copy"])
    assert all(len(t["rounds_ms"]) == 60 and all(len(r) == 1 for r in t["rounds_ms"]) for t in timings.values())
    same = difference("the copy", "VIM", timings["vim-copy"]["rounds_ms"], timings["vim"]["rounds_ms"])
    assert same.within_noise, same.sentence()
    slower = difference("the stock tail", "VIM", timings["stock"]["rounds_ms"], timings["vim"]["rounds_ms"])
    assert slower.low > 1 and "slower" in slower.sentence(), slower.sentence()
    assert conditions["rounds"] == 60 and len(conditions["load_avg_before"]) == 3
    assert conditions["pinned_cpus"] == [max(os.sched_getaffinity(0))]  # one thread: the last core


def test_a_measuring_session_keeps_its_thread_on_the_servers_core(tmp_path: Path) -> None:
    """TVM's big-cores mode moves the first thread to core 0; a pinned server's session must stay
    on the server's own cores."""
    from rpc import servers
    from rpc.session import connect

    with private_rpc_state(tmp_path / "rpc"):
        rec, = servers.start_servers("host", threads=1)
        assert rec.cpus == [max(os.sched_getaffinity(0))]
        assert psutil.Process(rec.pid).cpu_affinity() == rec.cpus
        with connect("host", servers.tracker_address()) as session:
            assert session.set_threads(1) == 1 and session.pinned() == rec.cpus
            workers = psutil.Process(rec.pid).children(recursive=True)
            assert workers
            for proc in workers:
                for thread in proc.threads():
                    assert psutil.Process(thread.id).cpu_affinity() == rec.cpus
