"""A bounded client for TVM's RPC tracker protocol. ``tvm.rpc.connect_tracker`` retries a
refused connection for 60 s and ``TrackerSession.request`` waits forever for a free server;
here every socket operation has a timeout and every failure is one line."""

from __future__ import annotations

import math
import os
import socket
import struct
import time
from dataclasses import dataclass

from tvm.rpc import base

DEFAULT_PORT = 9190
LOCAL_HOST = "127.0.0.1"
# s, default of PPMSEG_TRACKER_TIMEOUT: connecting to a tracker and each of its answers.
TRACKER_TIMEOUT = 5.0


class RPCError(RuntimeError):
    """A tracker, server or remote session failed; the message is one line."""


def env_seconds(name: str, default: float) -> float:
    """A wait in seconds from the environment variable ``name``, else ``default``."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise RPCError(f"{name}={text!r} is not a positive number of seconds")
    return value


def tracker_timeout() -> float:
    return env_seconds("PPMSEG_TRACKER_TIMEOUT", TRACKER_TIMEOUT)


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise RPCError(f"tracker address {text!r} is not host:port")
    return host, int(port)


def env_tracker() -> tuple[str, int] | None:
    """``TRACKER=host:port`` from the environment (the user's tracker of real devices)."""
    text = os.environ.get("TRACKER")
    return parse_address(text) if text else None


@dataclass(frozen=True)
class Queue:
    key: str
    servers: list[str]  # host:port of the registered servers
    free: int
    pending: int

    @property
    def total(self) -> int:
        return len(self.servers)

    @property
    def busy(self) -> int:
        return max(self.total - self.free, 0)


class TrackerClient:
    """One connection to a tracker. Use as a context manager."""

    def __init__(self, address: tuple[str, int], timeout: float | None = None) -> None:
        timeout = timeout or tracker_timeout()
        self.address, self.timeout = address, timeout
        where = f"{address[0]}:{address[1]}"
        try:
            self.sock = socket.create_connection(address, timeout=timeout)
        except ConnectionRefusedError:
            raise RPCError(f"no RPC tracker at {where} (connection refused; start one with "
                           f"`ppmseg tracker start`)") from None
        except TimeoutError:
            raise RPCError(f"RPC tracker at {where} did not accept a connection within {timeout:g} s") from None
        except OSError as e:
            raise RPCError(f"cannot reach RPC tracker at {where}: {e.strerror or e}") from None
        try:
            self.sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            magic = struct.unpack("<i", base.recvall(self.sock, 4))[0]
        except (OSError, struct.error):
            self.close()
            raise RPCError(f"{where} did not answer as an RPC tracker within {timeout:g} s") from None
        if magic != base.RPC_TRACKER_MAGIC:
            self.close()
            raise RPCError(f"{where} is not an RPC tracker")

    def __enter__(self) -> TrackerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _call(self, message: list, timeout: float | None = None) -> object:
        self.sock.settimeout(timeout or self.timeout)
        try:
            base.sendjson(self.sock, message)
            return base.recvjson(self.sock)
        except TimeoutError:
            raise RPCError(f"RPC tracker at {self.address[0]}:{self.address[1]} did not answer within "
                           f"{timeout or self.timeout:g} s") from None
        except OSError as e:
            raise RPCError(f"RPC tracker at {self.address[0]}:{self.address[1]} dropped the connection "
                           f"({e.strerror or e})") from None

    def summary(self) -> dict:
        value = self._call([base.TrackerCode.SUMMARY])
        if not isinstance(value, list) or value[0] != base.TrackerCode.SUCCESS:
            raise RPCError(f"unexpected tracker summary {value!r}")
        return value[1]

    def queues(self) -> dict[str, Queue]:
        """Per key: registered servers, free servers and pending requests."""
        data = self.summary()
        servers: dict[str, list[str]] = {}
        for item in data.get("server_info", []):
            key = item.get("key", "")
            if key.startswith("server:"):
                servers.setdefault(key[len("server:"):], []).append(":".join(map(str, item.get("addr", []))))
        keys = set(servers) | set(data.get("queue_info", {}))
        out = {}
        for k in sorted(keys):
            q = data.get("queue_info", {}).get(k, {"free": 0, "pending": 0})
            out[k] = Queue(k, sorted(servers.get(k, [])), int(q["free"]), int(q["pending"]))
        return out

    def request(self, key: str, timeout: float, priority: int = 1) -> tuple[str, int, str]:
        """Ask for a server of ``key``; (host, port, matchkey). Waits at most ``timeout`` for
        a free one (closing the connection withdraws the request from the tracker's queue)."""
        try:
            value = self._call([base.TrackerCode.REQUEST, key, "", priority], timeout=timeout)
        except RPCError as e:
            if "did not answer" in str(e):
                raise RPCError(f"no free {key!r} server within {timeout:.3g} s (all busy)") from None
            raise
        if not isinstance(value, list) or value[0] != base.TrackerCode.SUCCESS:
            raise RPCError(f"tracker refused the request for {key!r}: {value!r}")
        host, port, matchkey = value[1]
        return host, int(port), matchkey


def queues(address: tuple[str, int], timeout: float | None = None) -> dict[str, Queue]:
    with TrackerClient(address, timeout) as t:
        return t.queues()


def wait_for_servers(address: tuple[str, int], key: str, count: int, timeout: float,
                     ports: list[int] | None = None, poll: float = 0.5) -> Queue:
    """Poll the tracker until ``key`` has ``count`` free servers (and, if given, servers on
    all of ``ports`` registered). Raises RPCError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Queue | None = None
    while True:
        try:
            last = queues(address, timeout=min(5.0, max(timeout, 1.0))).get(key)
        except RPCError:
            last = None
        if last is not None and last.free >= count:
            registered = {int(s.rsplit(":", 1)[1]) for s in last.servers}
            if not ports or set(ports) <= registered:
                return last
        if time.monotonic() > deadline:
            seen = f"{last.free} free of {last.total}" if last else "none"
            raise RPCError(f"{count} {key!r} server(s) not ready on tracker {address[0]}:{address[1]} "
                           f"within {timeout:g} s (seen: {seen})")
        time.sleep(poll)
