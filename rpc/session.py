"""Remote sessions through a tracker: upload a compiled library, run it, time it.

Every remote step runs under a watchdog: TVM's RPC client blocks in C++ without a timeout
when a server stops answering, so on expiry the session's socket is shut down (which
makes the blocked call fail) and a one-line RPCError is raised.
"""

from __future__ import annotations

import gc
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from rpc.devices import DeviceProfile, load_profile
from rpc.servers import pinned_cpus, restart_hung, tracker_address
from rpc.tracker import RPCError, TrackerClient, env_seconds, tracker_timeout

__all__ = ["RPCError", "RemoteSession", "Timing", "benchmark_on_device", "connect", "run_on_device",
           "tracker_address"]

# Defaults of the environment variables that set them (read at each connect):
CONNECT_TIMEOUT = 30.0  # s, PPMSEG_CONNECT_TIMEOUT: a free server of the key, and the handshake with it
CALL_TIMEOUT = 600.0  # s, PPMSEG_CALL_TIMEOUT: one remote step (upload, load, run, timing); qemu is slow
AFFINITY_BIG = 1  # runtime.config_threadpool mode: big cores first (threading::ThreadGroup::kBig)
AFFINITY_ONE_CORE_PER_THREAD = -2  # ... each thread on one of the cores given (kSpecifyOneCorePerThread)


LOST = ("kshutdown", "socket", "connection reset", "broken pipe", "connection closed")


def _one_line(err: BaseException) -> str:
    """The informative line of a (possibly multi-line, C++-traceback) TVM error."""
    if any(s in str(err).lower() for s in LOST):
        return "connection lost (server killed, crashed or session timed out)"
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    skip = ("File ", "at ", "Traceback", "^", "Stack trace", "[bt]", "0:", "1:", "2:", "3:")
    useful = [ln for ln in lines if not ln.startswith(skip)]
    text = (useful or lines or [type(err).__name__])[-1]
    return text if len(text) <= 300 else text[:297] + "..."


@dataclass(frozen=True)
class Timing:
    """``time_evaluator`` results in milliseconds: each repeat is the mean of ``number`` runs."""

    function: str
    median_ms: float
    p90_ms: float
    mean_ms: float
    repeats_ms: list[float]
    number: int
    threads: int  # what the remote thread pool reported during the runs
    key: str

    def as_dict(self) -> dict:
        return asdict(self)


class RemoteSession:
    """A session on one server of ``key``. Use :func:`connect`; close with ``close()`` or ``with``."""

    def __init__(self, remote: Any, key: str, server: tuple[str, int], timeout: float) -> None:  # noqa: ANN401
        self.remote, self.key, self.server, self.timeout = remote, key, server, timeout
        self._vms: dict[str, Any] = {}  # loaded libraries' VirtualMachines, by slot
        self._dev = None
        self._broken: str | None = None

    def __enter__(self) -> RemoteSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RemoteSession({self.key!r} at {self.server[0]}:{self.server[1]})"

    def close(self) -> None:
        """End the session; the server returns to the tracker's pool."""
        self._vms, self._dev = {}, None
        if self.remote is not None:
            self.remote = None  # the last reference: the C++ session closes its socket
            if _server_sockets(self.server):  # a remote object still referenced somewhere
                gc.collect()
            _cut(self.server)

    def _guard(self, what: str, fn: Callable[[], Any], timeout: float | None = None) -> Any:  # noqa: ANN401
        """Run ``fn`` with a deadline; a hung server is cut off by shutting the socket down."""
        if self._broken:
            raise RPCError(f"session to {self._where()} is unusable: {self._broken}")
        if self.remote is None:
            raise RPCError("session is closed")
        return _guarded(what, fn, timeout or self.timeout, self.server, self._where(), self._mark_broken)

    def _mark_broken(self, why: str) -> None:
        self._broken = why

    def _where(self) -> str:
        return f"{self.key!r} server {self.server[0]}:{self.server[1]}"

    def upload(self, path: str | Path, name: str | None = None) -> str:
        name = name or Path(path).name
        blob = bytearray(Path(path).read_bytes())
        self._guard(f"uploading {name}", lambda: self.remote.upload(blob, name))
        return name

    def load(self, library: str | Path, slot: str = "main") -> None:
        """Upload a Relax VM library and create its VirtualMachine on the remote CPU, under
        ``slot``: several libraries stay loaded side by side, so they can be timed in turns."""
        from tvm import relax

        # A fresh name per upload: the server's dlopen caches by path, so a second library
        # written over the same name would be mapped over the first one (SIGBUS).
        name = self.upload(library, f"lib-{uuid.uuid4().hex[:12]}.so")

        def _load():  # noqa: ANN202
            lib = self.remote.load_module(name)
            dev = self.remote.cpu()
            return relax.VirtualMachine(lib, dev), dev

        self._vms[slot], self._dev = self._guard(f"loading {Path(library).name}", _load)

    def _require_vm(self, slot: str) -> Any:  # noqa: ANN401
        if slot not in self._vms:
            raise RPCError(f"no library loaded in slot {slot!r} of this session (call load() first)")
        return self._vms[slot]

    def run(self, inputs: np.ndarray | list[np.ndarray], function: str = "main",
            timeout: float | None = None, slot: str = "main") -> np.ndarray:
        """Call ``function`` (which must return one tensor) on numpy inputs; the result comes back."""
        import tvm

        vm = self._require_vm(slot)
        arrays = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)

        def _run() -> np.ndarray:
            args = [tvm.runtime.tensor(np.ascontiguousarray(a), self._dev) for a in arrays]
            out = vm[function](*args)
            if not hasattr(out, "numpy"):
                raise RPCError(f"{function} returned {type(out).__name__}, not one tensor (tuples do not cross RPC)")
            return out.numpy()

        return self._guard(f"running {function}", _run, timeout)

    def set_threads(self, threads: int) -> int:
        """Use ``threads`` worker threads in this session; returns the count the remote thread
        pool reports (capped by the server's TVM_NUM_THREADS). On a local server pinned to
        cores (``rpc.servers.server_cpus``) the threads go to those cores, one each; elsewhere
        big cores first. (TVM's big-cores mode would move the first thread to core 0, out of
        the server's cores.)"""
        cpus = pinned_cpus(self.server)

        def _set() -> int:
            configure = self.remote.get_function("runtime.config_threadpool")
            if cpus and len(cpus) >= threads:
                # All the server's cores, whatever the count: TVM's pool cannot grow again after a
                # configuration that named fewer cores than a later one asks threads for. The list
                # is built on the server: an Array does not cross RPC as an argument.
                cores = self.remote.get_function("ffi.Array")(*(str(c) for c in cpus))
                configure(AFFINITY_ONE_CORE_PER_THREAD, int(threads), cores)
            else:
                configure(AFFINITY_BIG, int(threads))
            return int(self.remote.get_function("runtime.NumThreads")())

        return self._guard("setting threads", _set)

    def pinned(self) -> list[int] | None:
        """The cores this session's server is pinned to (None: not pinned, or not local)."""
        return pinned_cpus(self.server)

    def num_threads(self) -> int:
        return self._guard("reading threads", lambda: int(self.remote.get_function("runtime.NumThreads")()))

    def benchmark(self, inputs: np.ndarray | list[np.ndarray], function: str = "main", number: int = 10,
                  repeat: int = 5, threads: int | None = None, timeout: float | None = None,
                  slot: str = "main") -> Timing:
        """``vm.time_evaluator(function, dev, number, repeat)`` on the remote (one warm-up run
        first, discarded): median and p90 over the ``repeat`` means."""
        import tvm

        vm = self._require_vm(slot)
        used = self.set_threads(threads) if threads else self.num_threads()
        arrays = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)

        def _time() -> list[float]:
            args = [tvm.runtime.tensor(np.ascontiguousarray(a), self._dev) for a in arrays]
            result = vm.time_evaluator(function, self._dev, number=number, repeat=repeat)(*args)
            return [float(r) * 1e3 for r in result.results]

        ms = self._guard(f"timing {function}", _time, timeout)
        return Timing(function, float(np.median(ms)), float(np.percentile(ms, 90)), float(np.mean(ms)), ms,
                      number, used, self.key)


def _server_sockets(server: tuple[str, int]) -> list[int]:
    """File descriptors of this process's TCP connections to ``server``."""
    try:
        conns = psutil.Process().net_connections(kind="tcp")
    except psutil.Error:
        return []
    ips = {server[0]}
    try:
        ips.add(socket.gethostbyname(server[0]))
    except OSError:
        pass
    return [c.fd for c in conns if c.raddr and c.raddr.port == server[1] and c.raddr.ip in ips and c.fd >= 0]


def _cut(server: tuple[str, int]) -> None:
    for fd in _server_sockets(server):
        try:
            s = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            s.shutdown(socket.SHUT_RDWR)  # the blocked C++ recv returns and the call fails
        except OSError:
            pass
        finally:
            s.close()


def _guarded(what: str, fn: Callable[[], Any], timeout: float, server: tuple[str, int], where: str,
             on_break: Callable[[str], None] | None = None) -> Any:  # noqa: ANN401
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    worker = threading.Thread(target=target, name=f"rpc: {what}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        _cut(server)
        worker.join(10.0)
        why = f"{what} on {where}: no answer within {timeout:.3g} s"
        if on_break:
            on_break(why)
        raise RPCError(why + "; session closed")
    if "error" in box:
        # The error's traceback holds the worker's frames and with them remote objects: drop it
        # now, or the session stays open until the garbage collector finds the cycle.
        err = box.pop("error")
        if isinstance(err, RPCError):
            raise err.with_traceback(None)
        why = f"{what} on {where} failed: {_one_line(err)}"
        lost = _is_connection_error(err)
        del err
        if on_break and lost:
            on_break(why)
        raise RPCError(why)
    return box.pop("value", None)


def _is_connection_error(err: BaseException) -> bool:
    return any(s in str(err).lower() for s in LOST)


def call_timeout() -> float:
    return env_seconds("PPMSEG_CALL_TIMEOUT", CALL_TIMEOUT)


def connect_timeout() -> float:
    return env_seconds("PPMSEG_CONNECT_TIMEOUT", CONNECT_TIMEOUT)


def connect(key: str, tracker: str | tuple[str, int] | None = None, timeout: float | None = None,
            wait: float | None = None, session_timeout: float = 0) -> RemoteSession:
    """A session on a free server of ``key`` from the tracker (see :func:`tracker_address`).
    Waits at most ``wait`` s (default :func:`connect_timeout`) for a free server; fails at
    once if none is registered. ``timeout`` (default :func:`call_timeout`) bounds each later
    remote step; ``session_timeout`` (s, 0: none) makes the server end the session itself
    after that long."""
    from tvm import rpc as tvm_rpc

    timeout, wait = timeout or call_timeout(), wait or connect_timeout()
    address = tracker_address(tracker)
    deadline = time.monotonic() + wait
    last = ""
    for _attempt in range(3):  # a server that died after the tracker handed it out: ask again
        with TrackerClient(address, timeout=min(wait, tracker_timeout())) as t:
            queue = t.queues().get(key)
            if queue is None or queue.total == 0:
                keys = ", ".join(k for k, q in t.queues().items() if q.total) or "none"
                raise RPCError(f"no {key!r} servers registered with tracker {address[0]}:{address[1]} "
                               f"(keys with servers: {keys})")
            host, port, matchkey = t.request(key, timeout=max(deadline - time.monotonic(), 0.5))
        # The handshake gets what is left of ``wait``, but at least min(wait, 5 s).
        handshake = max(deadline - time.monotonic(), min(wait, 5.0))
        try:
            remote = _guarded("handshake", lambda h=host, p=port, m=matchkey: tvm_rpc.connect(
                h, p, m, session_timeout=session_timeout), handshake, (host, port), f"{key!r} server {host}:{port}")
            return RemoteSession(remote, key, (host, port), timeout)
        except RPCError as e:
            last = str(e)
            if "no answer within" in last and restart_hung((host, port)):
                deadline = time.monotonic() + wait  # a local server that hung was restarted: ask again
                continue
            if "no answer within" in last or time.monotonic() > deadline:
                raise
    raise RPCError(last)


def run_on_device(library: str | Path, inputs: np.ndarray | list[np.ndarray], device: str | DeviceProfile,
                  tracker: str | tuple[str, int] | None = None, function: str = "main",
                  timeout: float | None = None) -> np.ndarray:
    """Upload ``library`` to a server of ``device``'s key, run ``function`` once, return the output."""
    profile = load_profile(device)
    with connect(profile.tracker_key, tracker, timeout=timeout) as s:
        s.load(library)
        return s.run(inputs, function)


def benchmark_on_device(library: str | Path, inputs: np.ndarray | list[np.ndarray], device: str | DeviceProfile,
                        tracker: str | tuple[str, int] | None = None, function: str = "main", number: int = 10,
                        repeat: int = 5, threads: int | None = None, timeout: float | None = None) -> Timing:
    """Time ``function`` of ``library`` on ``device`` with ``threads`` (default: the profile's)."""
    profile = load_profile(device)
    with connect(profile.tracker_key, tracker, timeout=timeout) as s:
        s.load(library)
        return s.benchmark(inputs, function, number, repeat, threads or profile.threads)
