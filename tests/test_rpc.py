"""Devices and RPC with real processes on 127.0.0.1: a TVM tracker, host servers and
emulated Snapdragon 855 servers (qemu-user), remote runs against local ones, and
failure modes that must end in bounded time with one-line errors."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import relax as R

from rpc import emulator, servers, session
from rpc.devices import DeviceError, load_profile, resolve_mode
from rpc.linkers import LinkerError, build_config
from rpc.tracker import RPCError, wait_for_servers

TIE = 1e-5
EMU_SIZE = (128, 128)
_W = np.random.default_rng(3).standard_normal((6, 3, 3, 3)).astype("float32")


@tvm.script.ir_module
class Tiny:
    @R.function
    def main(x: R.Tensor((1, 3, 16, 16), "float32")) -> R.Tensor((1, 16, 16), "int32"):
        with R.dataflow():
            y = R.nn.conv2d(x, R.const(_W), padding=1)
            labels = R.astype(R.argmax(y, axis=1), "int32")
            R.output(labels)
        return labels

    @R.function
    def logits(x: R.Tensor((1, 3, 16, 16), "float32")) -> R.Tensor((1, 6, 16, 16), "float32"):
        with R.dataflow():
            y = R.nn.conv2d(x, R.const(_W), padding=1)
            R.output(y)
        return y


def _export(mod: tvm.IRModule, device: str, path: Path, mode: str = "local") -> Path:
    from pipeline.common.tvm_log import quiet_tvm

    cfg = build_config(device, mode)
    with quiet_tvm():
        ex = tvm.compile(mod, target=tvm.target.Target(cfg.target))
        ex.export_library(str(path), fcompile=cfg.fcompile)
    return path


def _local(lib: Path, x: np.ndarray, function: str = "main") -> np.ndarray:
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
    return vm[function](tvm.runtime.tensor(x)).numpy()


def _elapsed(fn) -> tuple[BaseException | None, float]:  # noqa: ANN001
    t0 = time.monotonic()
    try:
        fn()
    except BaseException as e:  # noqa: BLE001
        return e, time.monotonic() - t0
    return None, time.monotonic() - t0


def _assert_one_line_error(err: BaseException | None, seconds: float, bound: float, *words: str) -> None:
    assert isinstance(err, RPCError), f"expected RPCError, got {err!r}"
    msg = str(err)
    assert "\n" not in msg and msg, msg
    assert seconds < bound, f"took {seconds:.1f} s (bound {bound} s): {msg}"
    for w in words:
        assert w in msg, msg


@pytest.fixture(scope="module")
def tiny_libs(tmp_path_factory):
    return {"host": _export(Tiny, "host", tmp_path_factory.mktemp("tiny") / "host.so")}


@pytest.fixture(scope="module")
def tiny_emu_lib(emulated, tmp_path_factory):
    """Cross-linked with aarch64-linux-gnu-g++ (installed by the emulator provisioning)."""
    return _export(Tiny, "sd855", tmp_path_factory.mktemp("tiny-emu") / "sd855.so")


# --- profiles and toolchains (no processes) ---

def test_sd855_profile_targets_and_linkers(monkeypatch):
    p = load_profile("sd855")
    real, emu = p.target_json(), p.target_json(emulated=True)
    assert real["mtriple"] == "aarch64-linux-android" and emu["mtriple"] == "aarch64-linux-gnu"
    assert {k: v for k, v in real.items() if k != "mtriple"} == {k: v for k, v in emu.items() if k != "mtriple"}
    assert real["mcpu"] == "cortex-a76" and real["num-cores"] == 1 and p.threads == 1 and p.tracker_key == "sd855"
    target = tvm.target.Target(real)  # LLVM knows the CPU and every requested feature
    assert target.attrs["feature.has_dotprod"] and target.attrs["feature.has_fp16_simd"]
    assert target.attrs["feature.has_asimd"]
    assert tvm.target.codegen.llvm_cpu_has_features(["dotprod", "fullfp16", "neon"], target)

    monkeypatch.delenv("TRACKER", raising=False)
    assert resolve_mode() == "local" and resolve_mode("127.0.0.2:9190") == "device"
    monkeypatch.setenv("TRACKER", "127.0.0.2:9190")
    assert resolve_mode() == "device"

    cfg = build_config("sd855", "local", check_linker=False)  # the linker itself: see the emulated tests
    assert cfg.emulated and cfg.linker == "aarch64-linux-gnu-g++" and cfg.target == emu
    assert build_config("host", "local").fcompile is None and build_config("host", "device").fcompile is None
    monkeypatch.delenv("TVM_NDK_CC", raising=False)
    with pytest.raises(LinkerError, match="TVM_NDK_CC") as e:
        build_config("sd855", "device")
    assert "\n" not in str(e.value)
    shown = build_config("sd855", "device", check_linker=False)
    assert shown.target == real and shown.fcompile is None
    monkeypatch.setenv("TVM_NDK_CC", "/nonexistent/clang++")
    with pytest.raises(LinkerError, match="not an executable"):
        build_config("sd855", "device")
    with pytest.raises(DeviceError, match="unknown device"):
        load_profile("pixel99")


def test_emulator_without_root_or_tools_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(emulator, "_is_root", lambda: False)
    monkeypatch.setenv("PATH", str(tmp_path))  # neither qemu-aarch64 nor the cross g++ on it
    with pytest.raises(emulator.EmulatorError, match="apt-get install g\\+\\+-aarch64-linux-gnu qemu-user") as e:
        emulator.ensure(root=tmp_path / "emu")
    assert "\n" not in str(e.value)


# --- tracker and host server ---

def test_host_server_matches_local_run(rpc_dir, tiny_libs):
    recs = servers.start_servers("host", 1, threads=2)
    assert [r.key for r in recs] == ["host"] and recs[0].alive()
    assert servers.devices()["host"].free == 1
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    with session.connect("host") as s:
        s.load(tiny_libs["host"])
        np.testing.assert_array_equal(s.run(x), _local(tiny_libs["host"], x))
        np.testing.assert_allclose(s.run(x, "logits"), _local(tiny_libs["host"], x, "logits"), rtol=1e-6, atol=1e-6)
        t1 = s.benchmark(x, number=5, repeat=4, threads=1)
        t2 = s.benchmark(x, number=5, repeat=4, threads=2)
    assert t1.threads == 1 and t2.threads == 2  # config_threadpool within the server's TVM_NUM_THREADS=2
    assert len(t1.repeats_ms) == 4 and 0 < t1.median_ms <= t1.p90_ms
    timing = session.benchmark_on_device(tiny_libs["host"], x, "host", number=2, repeat=2)
    assert timing.threads == load_profile("host").threads


def test_tracker_and_server_that_lose_their_port_start_again_on_the_next(tmp_path, monkeypatch):
    """Another fleet (another state directory) may bind a port between our check and the bind of
    the process we start on it: that process exits and is started again on the next free port."""
    monkeypatch.setenv("PPMSEG_RPC_DIR", str(tmp_path))
    monkeypatch.delenv("TRACKER", raising=False)
    blockers = [socket.socket() for _ in range(2)]
    for b in blockers:
        b.bind(("127.0.0.1", 0))
        b.listen(1)
    taken = [b.getsockname()[1] for b in blockers]
    real = servers._port_free
    # The check sees each taken port free once: the other fleet binds right after it.
    monkeypatch.setattr(servers, "_port_free", lambda port: taken.remove(port) is None if port in taken else real(port))
    monkeypatch.setattr(servers, "SERVER_PORT", blockers[1].getsockname()[1])
    try:
        tracker = servers.start_tracker(port=blockers[0].getsockname()[1])
        (server,) = servers.start_servers("host", count=1)
        assert taken == []  # both checks were fooled
        assert tracker.port != blockers[0].getsockname()[1] and tracker.alive()
        assert server.port != blockers[1].getsockname()[1] and server.alive()
        assert {r.name: r.port for r in servers.records()} == {"tracker": tracker.port, server.name: server.port}
        assert servers.devices()["host"].free == 1
    finally:
        servers.stop()
        for b in blockers:
            b.close()


def test_tracker_that_loses_its_port_to_another_tracker_is_not_fooled_by_its_answers(tmp_path, monkeypatch):
    """Two fleets starting at the same moment (two test workers, two users): the tracker that
    loses the port must not take the winner's answers for its own (seen in CI: its servers
    then registered with the other fleet's tracker)."""
    from tvm.rpc.tracker import Tracker

    other = Tracker("127.0.0.1", port=9400, port_end=9500, silent=True)
    monkeypatch.setenv("PPMSEG_RPC_DIR", str(tmp_path))
    monkeypatch.delenv("TRACKER", raising=False)
    taken = [other.port]
    real = servers._port_free
    monkeypatch.setattr(servers, "_port_free", lambda port: taken.remove(port) is None if port in taken else real(port))
    try:
        rec = servers.start_tracker(port=other.port)
        assert taken == [] and rec.port != other.port and rec.alive() and servers._listens(rec)
    finally:
        servers.stop()
        other.terminate()


def test_tracker_reuse_busy_port_and_stop(tmp_path, monkeypatch):
    monkeypatch.setenv("PPMSEG_RPC_DIR", str(tmp_path))
    monkeypatch.delenv("TRACKER", raising=False)
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    busy = blocker.getsockname()[1]
    try:
        rec = servers.start_tracker(port=busy)
        assert rec.port != busy and rec.alive()  # the next free port, recorded
        assert servers.start_tracker(port=busy).pid == rec.pid  # a live tracker is reused
        assert servers.local_tracker_address() == ("127.0.0.1", rec.port)
        assert servers.devices() == {}
        stale = dataclasses.replace(rec, name="server-ghost-0", role="server", pid=2**22 - 7, key="ghost")
        servers._write(stale)  # a pid file whose process is gone
        names = {s.name: s.alive for s in servers.status()}
        assert names == {"tracker": True, "server-ghost-0": False}
        t0 = time.monotonic()
        assert servers.stop() == ["tracker"]
        assert time.monotonic() - t0 < servers.STOP_TIMEOUT + 6
        assert not rec.alive() and servers.status() == []
        err, took = _elapsed(lambda: session.tracker_address())
        _assert_one_line_error(err, took, 2, "no RPC tracker")
        monkeypatch.setenv("TRACKER", "127.0.0.3:9999")  # the user's tracker of real phones wins
        assert session.tracker_address() == ("127.0.0.3", 9999)
        assert session.tracker_address("h:1") == ("h", 1)
    finally:
        blocker.close()


# --- failure modes ---

def test_tracker_not_running_fails_fast(rpc_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once closed: nothing listens there
    err, took = _elapsed(lambda: session.connect("host", tracker=f"127.0.0.1:{port}"))
    _assert_one_line_error(err, took, 3, "no RPC tracker", str(port))


def test_tracker_that_never_answers_is_bounded(rpc_dir):
    with socket.socket() as silent:  # accepts connections (kernel backlog) and never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        err, took = _elapsed(lambda: session.connect("host", tracker=silent.getsockname(), wait=3))
    _assert_one_line_error(err, took, 8, "did not answer")


def test_key_without_servers_fails_fast(rpc_dir):
    servers.start_tracker()
    err, took = _elapsed(lambda: session.connect("no-such-device"))
    _assert_one_line_error(err, took, 3, "no 'no-such-device' servers registered")


def _victim(rpc_dir: Path):
    """A host server under its own key, so killing it leaves the other tests' servers alone."""
    profile = dataclasses.replace(load_profile("host"), tracker_key="victim")
    return servers.start_servers(profile, 1, threads=1)[0]


def test_all_servers_busy_wait_is_bounded(rpc_dir):
    _victim(rpc_dir)
    with session.connect("victim"):
        err, took = _elapsed(lambda: session.connect("victim", wait=2))
    _assert_one_line_error(err, took, 5, "no free 'victim' server", "busy")
    with session.connect("victim", wait=10) as again:  # freed when the first session closed
        assert again.num_threads() == 1


def test_server_killed_mid_session(rpc_dir, tiny_libs):
    rec = _victim(rpc_dir)
    x = np.zeros((1, 3, 16, 16), np.float32)
    s = session.connect("victim")
    s.load(tiny_libs["host"])
    assert s.server[1] == rec.port
    killer = threading.Timer(1.0, lambda: os.killpg(rec.pid, signal.SIGKILL))
    killer.start()
    # About a minute of work if nothing stops it.
    err, took = _elapsed(lambda: s.benchmark(x, number=10_000_000, repeat=3, timeout=120))
    killer.join()
    _assert_one_line_error(err, took, 15, "connection lost")
    err, took = _elapsed(lambda: s.run(x))
    _assert_one_line_error(err, took, 1, "unusable")
    servers.stop(rec.name)


def test_server_that_stops_answering(rpc_dir, tiny_libs):
    rec = _victim(rpc_dir)
    x = np.zeros((1, 3, 16, 16), np.float32)
    with session.connect("victim") as s:
        s.load(tiny_libs["host"])
        os.killpg(rec.pid, signal.SIGSTOP)
        try:
            err, took = _elapsed(lambda: s.run(x, timeout=3))
        finally:
            os.killpg(rec.pid, signal.SIGCONT)
    _assert_one_line_error(err, took, 15, "no answer within 3 s")
    wait_for_servers(servers.local_tracker_address(), "victim", 1, timeout=30)  # back in the pool
    os.killpg(rec.pid, signal.SIGSTOP)  # a frozen server the tracker still lists as free
    try:
        # One of this module's servers: after the handshake's wait it is restarted in its place.
        with session.connect("victim", wait=4) as s:
            assert s.num_threads() == 1
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(rec.pid, signal.SIGCONT)
    again = next(r for r in servers.records() if r.name == rec.name)
    assert again.pid != rec.pid and again.port == rec.port and not rec.alive()
    servers.stop("victim")
    assert not again.alive()


# --- the emulated Snapdragon 855 ---

def test_emulator_cached_and_verified(emulated):
    emu, _ = emulated
    t0 = time.perf_counter()
    assert emulator.ensure(emu.qemu_cpu) == emu
    assert time.perf_counter() - t0 < 2  # idempotent: the stamp matches, nothing is redone
    info = emulator.verify(emu)
    assert info["machine"] == "aarch64" and info["tvm"] == tvm.__version__


def test_emulated_sd855_tiny_module_matches_host(emulated, tiny_libs, tiny_emu_lib):
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    with session.connect("sd855") as s:
        s.load(tiny_emu_lib)
        np.testing.assert_allclose(s.run(x, "logits"), _local(tiny_libs["host"], x, "logits"), rtol=1e-5, atol=1e-5)
        labels = s.run(x)
        assert s.num_threads() == 1
    np.testing.assert_array_equal(labels, _local(tiny_libs["host"], x))


def test_emulated_sd855_pp_mobileseg_matches_host(emulated, tmp_path):
    import torch

    from model.upsample import upsample
    from model.weights import load_model
    from pipeline.compile.build import import_network
    from pipeline.compile.tail import compose

    shape = (1, 3, *EMU_SIZE)
    module = compose(import_network(load_model("tiny", None), shape, "torch", tmp_path / "m.onnx"), shape, "vim")
    host_lib = _export(module, "host", tmp_path / "host.so")
    emu_lib = _export(module, "sd855", tmp_path / "sd855.so")
    x = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    with session.connect("sd855") as s:
        s.load(emu_lib)
        labels, logits = s.run(x), s.run(x, "logits")
        timing = s.benchmark(x, number=1, repeat=2, threads=1)
    ref_labels, ref_logits = _local(host_lib, x), _local(host_lib, x, "logits")
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=1e-4)
    assert labels.shape == (1, *EMU_SIZE) and labels.dtype == np.int32
    lg = torch.from_numpy(ref_logits)
    present = torch.unique(lg.argmax(1))
    top = upsample(lg[:, present], EMU_SIZE)[0].topk(min(2, len(present)), dim=0).values
    margin = (top[0] - top[1]).numpy() if len(present) > 1 else np.full(EMU_SIZE, np.inf)
    bad = (labels[0] != ref_labels[0]) & (margin >= TIE)
    assert not bad.any(), f"{int(bad.sum())} pixels differ away from ties"
    assert timing.threads == 1 and timing.median_ms > 0  # qemu time: proves the path, not a latency


def test_two_emulated_servers_both_receive_work(emulated, tiny_libs, tiny_emu_lib):
    _, recs = emulated
    x = np.random.default_rng(2).standard_normal((1, 3, 16, 16)).astype(np.float32)
    expected = _local(tiny_libs["host"], x)
    before = {r.name: Path(r.log).read_text().count("load_module") for r in recs}
    a, b = session.connect("sd855"), session.connect("sd855")
    try:
        assert {a.server[1], b.server[1]} == {r.port for r in recs}  # one session per server
        q = servers.devices()["sd855"]
        assert (q.total, q.free, q.busy) == (2, 0, 2)
        results: dict[int, np.ndarray] = {}

        def work(s: session.RemoteSession) -> None:
            s.load(tiny_emu_lib)
            results[s.server[1]] = s.run(x)

        threads = [threading.Thread(target=work, args=(s,)) for s in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        a.close()
        b.close()
    assert len(results) == 2
    for out in results.values():
        np.testing.assert_array_equal(out, expected)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # both servers logged the load (and return to the pool)
        after = {r.name: Path(r.log).read_text().count("load_module") for r in recs}
        if all(after[n] > before[n] for n in after) and servers.devices()["sd855"].free == 2:
            break
        time.sleep(0.2)
    assert all(after[n] > before[n] for n in after), (before, after)
    assert servers.devices()["sd855"].free == 2
