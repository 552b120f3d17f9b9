"""A device this run can reach: how to build for it (``BuildConfig``) and the tracker that
serves it, with the servers started here for local (host or emulated) devices.

With a user's tracker (``TRACKER=host:port``) the device is the real one behind it; without,
the local tracker is started with servers for the host or the emulated phone, restarted when
they run another thread count (measurements must use the device's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from rpc import servers
from rpc.devices import load_profile
from rpc.linkers import BuildConfig, build_config


@dataclass
class Device:
    config: BuildConfig  # target (num-cores = threads), linker, tracker key
    tracker: tuple[str, int]
    threads: int
    servers: int = 1  # servers registered under the key (measurements in flight at once)
    started: list[str] = field(default_factory=list)  # local RPC processes started for this run

    @property
    def name(self) -> str:
        return self.config.device

    @property
    def key(self) -> str:
        return self.config.tracker_key

    @property
    def emulated(self) -> bool:
        return self.config.emulated

    def tvm_target(self):  # noqa: ANN201 - tvm.target.Target, imported lazily
        import tvm

        return tvm.target.Target(self.config.target)

    def available(self) -> bool:
        """A server with the device's key is registered with the tracker."""
        try:
            queue = servers.devices(self.tracker).get(self.key)
        except Exception:  # noqa: BLE001 - an unreachable tracker offers no device either
            return False
        return queue is not None and queue.total > 0

    def release(self) -> None:
        """Stop the local RPC processes started for this device."""
        for name in self.started:
            servers.stop(name)


def connect_device(device: str, tracker: str | None = None, threads: int | None = None,
                   log: Callable[[str], None] = print) -> Device:
    """``device``'s build settings and a tracker serving it with ``threads`` per server
    (default: the profile's): the user's tracker, or the local one with servers started here."""
    profile = load_profile(device)
    threads = threads or profile.threads
    cfg = build_config(profile, tracker=tracker, threads=threads)
    if cfg.mode == "device":
        address = servers.tracker_address(tracker)
        queue = servers.devices(address).get(cfg.tracker_key)  # one tracker round trip
        return Device(cfg, address, threads, max(queue.total if queue is not None else 0, 1))
    if cfg.emulated:
        log(f"note: no TRACKER given; {profile.name} is EMULATED here (qemu): its timings measure the "
            "emulator, not a phone")
    running = {st.name for st in servers.status() if st.alive}
    recs = servers.start_servers(profile, threads=threads)
    queue = servers.devices().get(cfg.tracker_key)
    # Restart servers that run another thread count or that the tracker no longer lists
    # (a server whose session crashed).
    stale = [r.name for r in recs if r.threads != threads or queue is None or queue.total < len(recs)]
    if stale:
        for name in stale:
            servers.stop(name)
        recs = servers.start_servers(profile, threads=threads)
    started = sorted({st.name for st in servers.status() if st.alive} - running, key=lambda n: n == "tracker")
    return Device(cfg, servers.tracker_address(), threads, max(len(recs), 1), started)
