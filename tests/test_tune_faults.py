"""Tuning survives faults: real `ppmseg tune` processes against a real loopback tracker and
host server, stopped with real signals; the database is checked record by record after
each fault. The tests run in order on one work directory (each resumes the last)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from schedules.tuning import RECORDS, WORKLOADS
from tests.conftest import private_rpc_state

SIZE = "64x96"
TAG = f"tiny-host-{SIZE}-t1"
FAILED_RUN_SECS = 1e9  # MetaSchedule records a failed run with a huge run time (1e10 s)


_PROCS: list[subprocess.Popen] = []


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    with private_rpc_state(root / "rpc"):
        yield root
        for proc in _PROCS:  # a failed test must not leave a tuning run behind
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


def _args(env: Path, trials: int, *extra: str) -> list[str]:
    # No profile by part: these runs are about faults; tests/test_tune.py checks the profile.
    return [str(Path(sys.executable).with_name("ppmseg")), "tune", "--input-size", SIZE, "--trials", str(trials),
            "--no-profile", "--work-root", str(env / "work"), "--out-root", str(env / "build"), *extra]


def _start(env: Path, name: str, trials: int, *extra: str) -> subprocess.Popen:
    with open(env / f"{name}.log", "w") as out:
        _PROCS.append(subprocess.Popen(_args(env, trials, *extra), stdout=out, stderr=subprocess.STDOUT, text=True))
    return _PROCS[-1]


def _log(env: Path, name: str) -> str:
    return (env / f"{name}.log").read_text()


def _wait(cond: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None,
          poll: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the tuning process ended ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def _records(env: Path) -> list[str]:
    path = env / "work" / TAG / RECORDS
    return path.read_text().splitlines(keepends=True) if path.is_file() else []


def _database(env: Path) -> list[list]:
    """Every record is a complete line that parses and names a workload of the database."""
    workloads = (env / "work" / TAG / WORKLOADS).read_text().splitlines()
    lines = _records(env)
    assert all(line.endswith("\n") for line in lines), "a half-written record"
    records = [json.loads(line) for line in lines]
    assert all(0 <= r[0] < len(workloads) for r in records)
    return records


def _live_rpc() -> list[str]:
    from rpc import servers

    return [s.name for s in servers.status() if s.alive]


def _tuning_started(env: Path, name: str) -> Callable[[], bool]:
    return lambda: "tuning the" in _log(env, name)


def _measuring(key: str = "host") -> bool:
    """A candidate is being measured: the tracker lists the key's server as busy."""
    from rpc import servers

    try:
        queue = servers.devices().get(key)
    except Exception:  # noqa: BLE001 - the tracker may be between states
        return False
    return queue is not None and queue.busy > 0


def _kill_servers() -> None:
    """The device dies: every host server process group gets SIGKILL."""
    from rpc import servers

    for rec in servers.records():
        if rec.role == "server" and rec.alive():
            os.killpg(rec.pid, signal.SIGKILL)


def test_second_run_is_refused_and_a_run_stops_what_it_started(env):
    assert _live_rpc() == []
    first = _start(env, "first", 16)
    _wait(_tuning_started(env, "first"), 900, "tuning to start", first)
    second = subprocess.run(_args(env, 16), capture_output=True, text=True, timeout=120)
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [second.stderr.strip()]  # one line
    assert "in use by another run" in second.stderr and f"pid {first.pid}" in second.stderr
    assert first.wait(timeout=900) == 0, _log(env, "first")
    assert len(_database(env)) >= 16
    assert _live_rpc() == []  # the tracker and server it started are stopped again


def test_ctrl_c_stops_within_seconds_and_keeps_the_database(env):
    before = _records(env)
    run = _start(env, "sigint", len(before) + 200)
    _wait(_tuning_started(env, "sigint"), 600, "tuning to start", run)
    _wait(_measuring, 300, "a candidate being measured", run, poll=0.05)
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=60) == 130  # raises TimeoutExpired if it does not stop within a minute
    log = _log(env, "sigint")
    assert "interrupted" in log and "run the same command again to resume" in log, log
    assert _live_rpc() == []
    assert _records(env)[: len(before)] == before
    _database(env)


def test_sigkill_at_a_random_moment_then_resume(env):
    before = _records(env)
    run = _start(env, "sigkill", len(before) + 200)
    _wait(_tuning_started(env, "sigkill"), 600, "tuning to start", run)
    time.sleep(random.uniform(0, 20))
    run.kill()
    run.wait(timeout=30)
    killed = _records(env)
    assert killed[: len(before)] == before  # nothing written before the kill is lost
    complete = [line for line in killed if line.endswith("\n")]
    # The kill may land between records; make sure the resume also meets a half-written one.
    with open(env / "work" / TAG / RECORDS, "a") as f:
        f.write(complete[-1][: len(complete[-1]) // 2])
    resumed = subprocess.run(_args(env, len(complete) + 16), capture_output=True, text=True, timeout=1200)
    assert resumed.returncode == 0, resumed.stderr
    assert "dropped a half-written database line" in resumed.stdout
    after = _records(env)
    assert after[: len(complete)] == complete and len(after) > len(complete)  # the count only grows
    _database(env)
    artifact = env / "build" / f"tuned-{TAG}"
    report = json.loads((artifact / "report.json").read_text())
    assert report["trials"] == len(after) == sum(t["trials"] for t in report["tasks"])
    assert report["profile"] == [] and "Latency by part" not in (artifact / "report.md").read_text()  # --no-profile


def test_killed_device_comes_back_and_tuning_goes_on(env):
    from rpc import servers

    servers.stop()  # what the killed run left behind
    before = _records(env)
    run = _start(env, "comeback", len(before) + 24, "--device-wait", "600")
    _wait(_tuning_started(env, "comeback"), 600, "tuning to start", run)
    _wait(_measuring, 300, "a candidate being measured", run, poll=0.05)
    _kill_servers()
    _wait(lambda: "waiting up to" in _log(env, "comeback"), 300, "the run to wait for the device", run)
    servers.start_servers("host")
    assert run.wait(timeout=900) == 0, _log(env, "comeback")
    assert "a server is back" in _log(env, "comeback")
    records = _database(env)[len(before):]
    secs = [max(float(s) for s in r[1][1]) for r in records]
    # A candidate measured when the server dies is recorded as a failed run, but the kill cannot
    # be aimed at one: the tracker still lists the server as busy for a moment after a
    # measurement ends (seen in CI: the kill landed there, every candidate then succeeded).
    # What must hold either way: the run waited, went on, and measured after the comeback.
    assert any(s < FAILED_RUN_SECS for s in secs), "no candidate measured after the device came back"


def test_device_that_never_comes_back_stops_cleanly(env):
    before = _records(env)
    run = _start(env, "lost", len(before) + 200, "--device-wait", "3")
    _wait(_tuning_started(env, "lost"), 600, "tuning to start", run)
    _wait(_measuring, 300, "a candidate being measured", run, poll=0.05)
    _kill_servers()
    assert run.wait(timeout=300) == 1
    log = _log(env, "lost")
    error = [line for line in log.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "no server with key 'host' came back within 3 s" in error[0], log
    assert "run the same command again to resume" in error[0] and "Traceback" not in log
    assert _records(env)[: len(before)] == before
    _database(env)
