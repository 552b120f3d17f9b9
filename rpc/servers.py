"""The local RPC fleet: a TVM tracker on 127.0.0.1, host servers and emulated-device
servers registered with it, run as detached processes.

Each process has a JSON record (pid, port, key, ...) and a log in the state directory
(``PPMSEG_RPC_DIR``, default ``.cache/rpc``). Every process is the leader of its own
process group (TVM servers fork workers), so stopping signals the whole group:
SIGTERM, then SIGKILL after a bounded wait.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from rpc import CACHE, emulator
from rpc import tracker as _tracker
from rpc.devices import DeviceProfile, load_profile
from rpc.tracker import DEFAULT_PORT, LOCAL_HOST, Queue, RPCError, TrackerClient, wait_for_servers

SERVER_PORT = 9090  # first port tried for servers (TVM's default)
TRACKER_READY_TIMEOUT = 30.0
HOST_READY_TIMEOUT = 60.0
EMULATED_READY_TIMEOUT = 240.0  # two emulated Pythons import TVM per server
STOP_TIMEOUT = 10.0

_children: dict[int, subprocess.Popen] = {}  # started by this process: reaped, never left as zombies


def state_dir() -> Path:
    path = Path(os.environ.get("PPMSEG_RPC_DIR") or CACHE / "rpc")
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class Record:
    """A process this module started."""

    name: str  # "tracker", "server-host-0", "server-sd855-1"
    role: str  # "tracker" | "server"
    pid: int
    port: int
    log: str
    created: float  # the process's start time, to tell a reused pid apart
    key: str | None = None
    tracker_port: int | None = None
    threads: int | None = None  # TVM_NUM_THREADS of the server (its thread pool size)
    emulated: bool = False
    cmd: list[str] = field(default_factory=list)
    cpus: list[int] | None = None  # the cores a server is pinned to (None: not pinned)

    @property
    def path(self) -> Path:
        return state_dir() / f"{self.name}.json"

    def alive(self) -> bool:
        _reap()
        try:
            proc = psutil.Process(self.pid)
            return abs(proc.create_time() - self.created) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def last_log_line(self) -> str:
        try:
            lines = [ln for ln in Path(self.log).read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return lines[-1].strip() if lines else ""


@dataclass(frozen=True)
class Status:
    name: str
    role: str
    pid: int
    port: int
    key: str | None
    alive: bool
    emulated: bool
    threads: int | None
    log: str


def _reap() -> None:
    for pid, proc in list(_children.items()):
        if proc.poll() is not None:
            del _children[pid]


def _write(rec: Record) -> None:
    tmp = rec.path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(rec), indent=2) + "\n")
    tmp.rename(rec.path)


def records() -> list[Record]:
    """Every recorded process, alive or not."""
    out = []
    for path in sorted(state_dir().glob("*.json")):
        try:
            out.append(Record(**json.loads(path.read_text())))
        except (OSError, json.JSONDecodeError, TypeError):
            path.unlink(missing_ok=True)  # a torn or foreign file
    return out


def _live(role: str | None = None, key: str | None = None) -> list[Record]:
    return [r for r in records() if (role is None or r.role == role) and (key is None or r.key == key) and r.alive()]


def tracker_record() -> Record | None:
    """The running local tracker, if any."""
    live = _live("tracker")
    return live[0] if live else None


def local_tracker_address() -> tuple[str, int] | None:
    rec = tracker_record()
    return (LOCAL_HOST, rec.port) if rec else None


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as TVM binds: TIME_WAIT is free
        try:
            s.bind((LOCAL_HOST, port))
        except OSError:
            return False
    return True


def _pick_port(start: int, taken: set[int], span: int = 200) -> int:
    for port in range(start, start + span):
        if port not in taken and _port_free(port):
            return port
    raise RPCError(f"no free port in {start}..{start + span - 1} on {LOCAL_HOST}")


def _spawn(name: str, cmd: list[str], env: dict | None = None,
           cpus: list[int] | None = None) -> tuple[subprocess.Popen, Path]:
    log = state_dir() / f"{name}.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=state_dir(), env={**os.environ, **(env or {})})
    if cpus:
        # Popen returns once the child has exec'd, before the interpreter starts any thread:
        # every thread and forked session worker of the server inherits the mask.
        os.sched_setaffinity(proc.pid, cpus)
    _children[proc.pid] = proc
    return proc, log


def server_cpus(index: int, threads: int, count: int) -> list[int] | None:
    """The cores server ``index`` of ``count`` is pinned to: ``threads`` of its own, from the
    last core down (the first core takes most interrupts, and the tuning's candidate builds
    get what is left). None when the servers' threads do not all fit on this machine's cores."""
    cores = sorted(os.sched_getaffinity(0))
    if threads * count > len(cores):
        return None
    end = len(cores) - index * threads
    return cores[end - threads:end]


def _local_server(server: tuple[str, int]) -> Record | None:
    """The live server of this module listening at ``server``, if any."""
    return next((r for r in _live("server") if (LOCAL_HOST, r.port) == (server[0], server[1])), None)


def pinned_cpus(server: tuple[str, int]) -> list[int] | None:
    """The cores of the local server listening at ``server``; None for a server that is not
    pinned or not one of this machine's (a phone)."""
    rec = _local_server(server)
    return rec.cpus if rec else None


def _created(pid: int) -> float:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return 0.0


def _group_alive(pgid: int) -> bool:
    _reap()
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def _terminate(rec: Record, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM the record's process group, SIGKILL what is left after ``timeout``."""
    pgid = rec.pid  # started with start_new_session: the leader's pid is the group id
    try:
        ours = abs(psutil.Process(pgid).create_time() - rec.created) < 1.0
    except psutil.NoSuchProcess:
        ours = True  # leader gone: a pid is not reused while its group has members, so any are ours
    if not ours or not _group_alive(pgid):
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _group_alive(pgid):
                return
            time.sleep(0.1)
    raise RPCError(f"{rec.name} (pid {rec.pid}) survived SIGKILL")


def _fail_start(rec: Record, what: str) -> RPCError:
    line = rec.last_log_line()
    _terminate(rec)
    rec.path.unlink(missing_ok=True)
    return RPCError(f"{rec.name} {what}" + (f": {line}" if line else f" (log: {rec.log})"))


def _respawn(rec: Record, port: int | None = None) -> Record:
    """``rec``'s command started again (on ``port`` instead of its own, if given)."""
    cmd = list(rec.cmd)
    if port is not None:  # both commands (tracker, server) bind the one port in [--port, --port-end)
        cmd[cmd.index("--port") + 1], cmd[cmd.index("--port-end") + 1] = str(port), str(port + 1)
    proc, log = _spawn(rec.name, cmd, env={"TVM_NUM_THREADS": str(rec.threads)} if rec.threads else None,
                       cpus=rec.cpus)
    new = Record(**{**asdict(rec), "pid": proc.pid, "port": port or rec.port, "log": str(log),
                    "created": _created(proc.pid), "cmd": cmd})
    _write(new)
    return new


def _listens(rec: Record) -> bool:
    """``rec``'s process or one of its children (TVM serves from a worker process) listens on
    ``rec.port``: an answer there is its own, not that of another state directory's tracker
    that won the port while this one was starting."""
    try:
        leader = psutil.Process(rec.pid)
        procs = [leader, *leader.children(recursive=True)]
    except psutil.Error:
        return False
    for proc in procs:
        try:
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == rec.port for c in proc.net_connections("tcp")):
                return True
        except psutil.Error:
            continue
    return False


def _moved_if_port_lost(rec: Record) -> Record | None:
    """A process that exited at start because another one took its port between the check and
    its bind (another state directory's tracker or servers starting at the same moment),
    started again on the next free port; None when it exited for another reason."""
    if rec.alive() or _port_free(rec.port):
        return None
    return _respawn(rec, _pick_port(rec.port + 1, {r.port for r in _live()} | {rec.port}))


def start_tracker(port: int = DEFAULT_PORT, timeout: float = TRACKER_READY_TIMEOUT) -> Record:
    """Start ``tvm.exec.rpc_tracker`` on 127.0.0.1 (the next free port from ``port``), or
    return the running one."""
    if (rec := tracker_record()) is not None:
        return rec
    for stale in records():
        if stale.role == "tracker":
            stale.path.unlink(missing_ok=True)
    port = _pick_port(port, {r.port for r in _live()})
    cmd = [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", LOCAL_HOST, "--port", str(port),
           "--port-end", str(port + 1)]
    proc, log = _spawn("tracker", cmd)
    rec = Record("tracker", "tracker", proc.pid, port, str(log), _created(proc.pid), cmd=cmd)
    _write(rec)
    deadline = time.monotonic() + timeout
    while True:
        if not rec.alive():
            moved = _moved_if_port_lost(rec)
            if moved is None:
                raise _fail_start(rec, "exited at start")
            rec = moved
        try:
            if not _listens(rec):
                raise RPCError("not listening yet")
            with TrackerClient((LOCAL_HOST, rec.port), timeout=2.0) as t:
                t.summary()
            return rec
        except RPCError:
            if time.monotonic() > deadline:
                raise _fail_start(rec, f"did not answer within {timeout:g} s") from None
            time.sleep(0.2)


def _server_command(profile: DeviceProfile, tracker_port: int, port: int,
                    emulator_dir: str | Path | None) -> tuple[list[str], bool]:
    args = ["--tracker", f"{LOCAL_HOST}:{tracker_port}", "--key", profile.tracker_key, "--host", LOCAL_HOST,
            "--port", str(port), "--port-end", str(port + 1)]
    if profile.is_host:
        return [sys.executable, "-m", "tvm.exec.rpc_server", *args], False
    if profile.emulation is None:
        raise RPCError(f"device {profile.name!r} is neither this machine nor emulated: run its RPC server on the "
                       f"device and set TRACKER=host:port")
    emu = emulator.ensure(profile.emulation.qemu_cpu, emulator_dir)
    return emu.runpy_command("tvm.exec.rpc_server", *args), True


def start_servers(device: str | DeviceProfile = "host", count: int | None = None, threads: int | None = None,
                  timeout: float | None = None, emulator_dir: str | Path | None = None) -> list[Record]:
    """Ensure ``count`` live servers for ``device`` registered with the local tracker
    (started if needed): a host server for host profiles, emulated servers (provisioning
    the emulator) for profiles with ``[emulation]``. ``threads`` sizes each server's
    thread pool (TVM_NUM_THREADS; sessions may use fewer, never more), default the
    profile's ``threads``: clients that do not set threads themselves (MetaSchedule's
    RPCRunner) then measure with the profile's count.
    Returns the device's live servers once the tracker lists them all as free."""
    profile = load_profile(device)
    count = count if count is not None else (profile.emulation.servers if profile.emulation and not
                                            profile.is_host else 1)
    threads = threads or profile.threads
    tracker = start_tracker()
    key = profile.tracker_key
    live = _live("server", key)
    for rec in live:
        if rec.tracker_port != tracker.port:  # registered with a tracker that is gone
            stop(rec.name)
    live = [r for r in live if r.tracker_port == tracker.port]
    new: list[Record] = []
    taken = {r.port for r in _live()}
    names = {r.name for r in live}
    for _ in range(max(count - len(live), 0)):
        port = _pick_port(SERVER_PORT, taken)
        taken.add(port)
        index = next(i for i in range(10_000) if f"server-{key}-{i}" not in names)
        name = f"server-{key}-{index}"
        names.add(name)
        cmd, emulated = _server_command(profile, tracker.port, port, emulator_dir)
        cpus = server_cpus(index, threads, max(count, index + 1))
        proc, log = _spawn(name, cmd, env={"TVM_NUM_THREADS": str(threads)}, cpus=cpus)
        rec = Record(name, "server", proc.pid, port, str(log), _created(proc.pid), key=key,
                     tracker_port=tracker.port, threads=threads, emulated=emulated, cmd=cmd, cpus=cpus)
        _write(rec)
        new.append(rec)
    if new:
        timeout = timeout or (EMULATED_READY_TIMEOUT if new[0].emulated else HOST_READY_TIMEOUT)
        new = _wait_registered(new, tracker.port, timeout)
    return sorted(live + new, key=lambda r: r.name)


def _wait_registered(new: list[Record], tracker_port: int, timeout: float) -> list[Record]:
    """``new`` once the tracker lists them all (with the ports of any that had to move)."""
    deadline = time.monotonic() + timeout
    key = new[0].key
    new = list(new)
    while True:
        for i, rec in enumerate(new):
            if not rec.alive():
                moved = _moved_if_port_lost(rec)
                if moved is None:
                    for other in new:
                        if other is not rec:
                            _terminate(other)
                            other.path.unlink(missing_ok=True)
                    raise _fail_start(rec, "exited at start")
                new[i] = moved
        try:
            wait_for_servers((LOCAL_HOST, tracker_port), key, len(new), timeout=0, ports=[r.port for r in new])
            return new
        except RPCError as e:
            if time.monotonic() > deadline:
                for rec in new:
                    _terminate(rec)
                    rec.path.unlink(missing_ok=True)
                raise RPCError(f"{len(new)} {key!r} server(s) did not register within {timeout:g} s "
                               f"(log: {new[0].log}): {e}") from None
        time.sleep(0.5)


def restart_hung(server: tuple[str, int]) -> bool:
    """Stop the local server listening at ``server`` and start it again with the same command,
    waiting until it is registered. For a server that stopped answering handshakes: TVM's
    server forks each session from a thread, and under qemu-user such a fork can hang,
    leaving the server waiting on it for good (seen once in CI). False when no live server
    of this module listens there (a remote device is never touched)."""
    rec = _local_server(server)
    if rec is None or rec.tracker_port is None:
        return False
    _terminate(rec)
    _wait_registered([_respawn(rec)], rec.tracker_port, EMULATED_READY_TIMEOUT if rec.emulated else HOST_READY_TIMEOUT)
    return True


def stop(name: str | None = None) -> list[str]:
    """Stop one recorded process by name (``tracker``, ``server-sd855-0``), every server of a
    key (``sd855``), or everything (None: servers first, then the tracker). Returns the
    names stopped."""
    recs = records()
    if name is not None:
        recs = [r for r in recs if name in (r.name, r.key)]
        if not recs:
            raise RPCError(f"no local RPC process named {name!r}")
    stopped = []
    for rec in sorted(recs, key=lambda r: r.role == "tracker"):
        was_alive = rec.alive()
        _terminate(rec)
        rec.path.unlink(missing_ok=True)
        if was_alive:
            stopped.append(rec.name)
    return stopped


def status() -> list[Status]:
    """Every recorded process and whether it is alive (dead ones are reported once, then forgotten)."""
    out = []
    for rec in records():
        alive = rec.alive()
        out.append(Status(rec.name, rec.role, rec.pid, rec.port, rec.key, alive, rec.emulated, rec.threads, rec.log))
        if not alive:
            rec.path.unlink(missing_ok=True)
    return out


def tracker_address(tracker: str | tuple[str, int] | None = None) -> tuple[str, int]:
    """Explicit ``host:port`` > ``TRACKER`` in the environment > the local tracker."""
    if isinstance(tracker, tuple):
        return tracker
    if tracker:
        return _tracker.parse_address(tracker)
    if (addr := _tracker.env_tracker()) is not None:
        return addr
    if (addr := local_tracker_address()) is not None:
        return addr
    raise RPCError("no RPC tracker: set TRACKER=host:port for real devices, or start the local one with "
                   "`ppmseg tracker start`")


def devices(tracker: str | tuple[str, int] | None = None, timeout: float | None = None) -> dict[str, Queue]:
    """What a tracker offers, per key (servers, free, busy, pending); the tracker is chosen
    as in :func:`tracker_address`. ``timeout``: default ``PPMSEG_TRACKER_TIMEOUT`` (5 s)."""
    return _tracker.queues(tracker_address(tracker), timeout)


def ensure_local(device: str | DeviceProfile, count: int = 1, threads: int | None = None) -> tuple[str, int]:
    """The local tracker's address, with at least ``count`` servers for ``device`` started."""
    start_servers(device, count, threads)
    return local_tracker_address()


def format_devices(qs: dict[str, Queue]) -> str:
    """A table for ``ppmseg devices``."""
    if not qs:
        return "no servers registered"
    rows = [("key", "servers", "free", "busy", "pending", "addresses")]
    rows += [(q.key, str(q.total), str(q.free), str(q.busy), str(q.pending), " ".join(q.servers)) for q in qs.values()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def format_status(items: list[Status]) -> str:
    """A table for ``ppmseg tracker status``."""
    if not items:
        return "no local RPC processes"
    rows = [("name", "pid", "port", "key", "state", "threads", "log")]
    rows += [(s.name, str(s.pid), str(s.port), s.key or "-", ("running" if s.alive else "dead") +
              (" (emulated)" if s.emulated else ""), str(s.threads or "-"), s.log) for s in items]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
