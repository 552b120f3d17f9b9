"""Network faults through the real ``ppmseg`` CLI, with real processes and sockets on
127.0.0.1: no tracker, a tracker that never answers, a tracker without servers for the key,
a server that accepts and never answers, a remote call that never returns. Every wait is
bounded by its environment variable and ends in one line on stderr with exit code 1.
(tests/test_rpc.py has the same faults at the library level.)"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from tvm.rpc import base
from tvm.rpc.base import TrackerCode

from rpc import servers
from tests.conftest import private_rpc_state, run_cli
from tests.test_bad_input import assert_one_line_error, small_artifact

STARTUP = 12.0  # s: a CLI process importing torch and TVM on a busy 2-core machine, with margin


@pytest.fixture(scope="module", autouse=True)
def rpc_state(tmp_path_factory) -> Iterator[Path]:
    """Every command and process here uses a private state directory, never the user's fleet."""
    with private_rpc_state(tmp_path_factory.mktemp("rpc")) as directory:
        yield directory


@pytest.fixture(scope="module")
def tracker(rpc_state) -> tuple[str, int]:
    """A real TVM tracker (stopped with the state directory); no servers unless a test starts them."""
    return "127.0.0.1", servers.start_tracker().port


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    return small_artifact(tmp_path_factory)


@pytest.fixture(scope="module")
def x(artifact) -> Path:
    import numpy as np

    path = artifact.parent / "net-x.npy"
    np.save(path, np.zeros((1, 3, 64, 64), np.float32))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once closed


def _cli(*args: str) -> tuple[str, float]:
    t0 = time.monotonic()
    proc = run_cli(*args, check=False)
    took = time.monotonic() - t0
    return assert_one_line_error(proc), took


@contextmanager
def silent_server(tracker: tuple[str, int] | None = None, key: str = "host") -> Iterator[int]:
    """A TCP server that accepts connections and never sends a byte; with ``tracker``, first
    registered under ``key`` the way TVM's RPC server registers (so the tracker hands it out)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    registration = None
    if tracker is not None:
        registration = socket.create_connection(tracker, timeout=5)
        registration.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        assert struct.unpack("<i", base.recvall(registration, 4))[0] == base.RPC_TRACKER_MAGIC
        base.sendjson(registration, [TrackerCode.UPDATE_INFO, {"key": f"server:{key}", "addr": [None, port]}])
        assert base.recvjson(registration) == TrackerCode.SUCCESS
        base.sendjson(registration, [TrackerCode.PUT, key, [port, f"{key}:silent"], None])
        assert base.recvjson(registration) == TrackerCode.SUCCESS
    worker = threading.Thread(target=accept, daemon=True)
    worker.start()
    try:
        yield port
    finally:
        stop.set()
        worker.join(5)
        for s in [*held, listener, *([registration] if registration else [])]:
            s.close()


def test_no_tracker_at_the_address(artifact, x, tmp_path):
    port = _free_port()
    out = tmp_path / "labels.npy"
    for args in (["run", "--artifact", str(artifact), "--device", "host", "--tracker", f"127.0.0.1:{port}",
                  "--input", str(x), "-o", str(out)],
                 ["devices", "--tracker", f"127.0.0.1:{port}"]):
        line, took = _cli(*args)
        assert f"no RPC tracker at 127.0.0.1:{port} (connection refused" in line
        assert took < STARTUP, f"{took:.1f} s"
    assert not out.exists()


def test_tracker_that_never_answers(artifact, x, tmp_path, monkeypatch):
    monkeypatch.setenv("PPMSEG_TRACKER_TIMEOUT", "2")
    out = tmp_path / "labels.npy"
    with silent_server() as port:
        for args in (["devices", "--tracker", f"127.0.0.1:{port}"],
                     ["run", "--artifact", str(artifact), "--device", "host", "--tracker", f"127.0.0.1:{port}",
                      "--input", str(x), "-o", str(out)]):
            line, took = _cli(*args)
            assert f"127.0.0.1:{port} did not answer as an RPC tracker within 2 s" in line
            assert 2 <= took < 2 + STARTUP, f"{took:.1f} s"
    assert not out.exists()


def test_tracker_without_servers_for_the_key(tracker, artifact, x):
    host, port = tracker
    line, took = _cli("bench", "--artifact", str(artifact), "--tracker", f"{host}:{port}", "--input", str(x))
    assert f"no 'host' servers registered with tracker {host}:{port} (keys with servers: none)" in line
    assert took < STARTUP, f"{took:.1f} s"
    listed = run_cli("devices", "--tracker", f"{host}:{port}")  # not an error: nothing is offered
    assert listed.stdout.strip() == "no servers registered"


def test_server_that_accepts_and_never_answers(tracker, artifact, x, tmp_path, monkeypatch):
    monkeypatch.setenv("PPMSEG_CONNECT_TIMEOUT", "3")
    host, port = tracker
    out = tmp_path / "labels.npy"
    with silent_server(tracker, "host") as server_port:
        line, took = _cli("run", "--artifact", str(artifact), "--device", "host", "--tracker", f"{host}:{port}",
                          "--input", str(x), "-o", str(out))
    assert f"handshake on 'host' server 127.0.0.1:{server_port}: no answer within 3 s" in line
    assert 3 <= took < 3 + STARTUP, f"{took:.1f} s"
    assert not out.exists()


def test_remote_call_that_never_returns(tracker, artifact, x, monkeypatch):
    """A real host server kept busy far beyond PPMSEG_CALL_TIMEOUT (a million timed runs)."""
    host, port = tracker
    rec = servers.start_servers("host", 1, threads=1)[0]
    monkeypatch.setenv("PPMSEG_CALL_TIMEOUT", "4")
    try:
        line, took = _cli("bench", "--artifact", str(artifact), "--tracker", f"{host}:{port}", "--input", str(x),
                          "--repeat", "1", "--number", "1000000")
    finally:
        servers.stop(rec.name)
    assert f"timing main on 'host' server 127.0.0.1:{rec.port}: no answer within 4 s" in line
    assert 4 <= took < 4 + STARTUP + 10, f"{took:.1f} s"  # + upload and load of the library


def test_malformed_timeout_is_a_one_line_error(tracker, monkeypatch):
    monkeypatch.setenv("PPMSEG_TRACKER_TIMEOUT", "-1")
    line, _ = _cli("devices", "--tracker", f"{tracker[0]}:{tracker[1]}")
    assert "PPMSEG_TRACKER_TIMEOUT='-1' is not a positive number of seconds" in line


@pytest.mark.parametrize("value", ["soon", "0", "nan", "inf", "-3"])
def test_timeouts_must_be_positive_seconds(monkeypatch, value):
    from rpc.session import call_timeout, connect_timeout
    from rpc.tracker import RPCError, tracker_timeout

    monkeypatch.setenv("PPMSEG_CONNECT_TIMEOUT", "2.5")
    assert connect_timeout() == 2.5
    monkeypatch.delenv("PPMSEG_CALL_TIMEOUT", raising=False)
    assert call_timeout() == 600.0
    monkeypatch.setenv("PPMSEG_TRACKER_TIMEOUT", value)
    with pytest.raises(RPCError, match="PPMSEG_TRACKER_TIMEOUT"):
        tracker_timeout()
