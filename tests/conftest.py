"""Shared fixtures: the PaddleSeg reference outputs and a way to run the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def empty_records_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Tuning runs in the tests begin from scratch, whatever the project's records store holds
    (a test that wants a store fills its own and points PPMSEG_RECORDS at it)."""
    with pytest.MonkeyPatch.context() as env:
        path = tmp_path_factory.mktemp("records")
        env.setenv("PPMSEG_RECORDS", str(path))
        yield path


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """Written by ``make reference`` (PaddleSeg 2.8 in its own venv). Missing
    reference data is a failure, not a skip: parity is what these tests are for."""
    path = Path(os.environ.get("PPMSEG_REFERENCE_DIR", ROOT / ".cache" / "reference"))
    if not (path / "manifest.json").is_file():
        pytest.fail(f"no reference outputs in {path}: run `make reference`")
    return path


@pytest.fixture(scope="session")
def manifest(reference_dir: Path) -> dict:
    return json.loads((reference_dir / "manifest.json").read_text())


# What the ``ppmseg`` entry point runs, but imported from this tree (PYTHONPATH), so that the tests
# drive the source they sit beside even where another checkout is the one installed.
ENTRY_POINT = "from pipeline.cli import main; main(prog_name='ppmseg')"


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The ``ppmseg`` command in a subprocess (real exit codes and stderr)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", ENTRY_POINT, *args], capture_output=True, text=True, timeout=600,
                          env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"ppmseg {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@contextmanager
def private_rpc_state(directory: Path) -> Iterator[Path]:
    """Local mode (no user tracker) with a private tracker state directory, so tests never
    touch a fleet the user started; stops whatever was started and restores the environment."""
    from rpc import servers

    old = {k: os.environ.get(k) for k in ("PPMSEG_RPC_DIR", "TRACKER")}
    os.environ["PPMSEG_RPC_DIR"] = str(directory)
    os.environ.pop("TRACKER", None)
    try:
        yield directory
    finally:
        servers.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def rpc_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private state directory: these tests never touch a fleet the user started."""
    with private_rpc_state(tmp_path_factory.mktemp("rpc-state")) as directory:
        yield directory


@pytest.fixture(scope="module")
def emulated(rpc_dir: Path) -> tuple:
    """Provision the emulated SD855 (cached under .cache/emulator) and start two servers:
    ``(emulation, server records)``."""
    from rpc import emulator, servers
    from rpc.devices import load_profile

    t0 = time.perf_counter()
    was_cached = emulator.provisioned()
    emu = emulator.ensure(load_profile("sd855").emulation.qemu_cpu)
    t1 = time.perf_counter()
    recs = servers.start_servers("sd855", 2, threads=1)
    print(f"\nemulator {'cache hit' if was_cached else 'provisioned from scratch'} in {t1 - t0:.1f} s; "
          f"two emulated servers ready in {time.perf_counter() - t1:.1f} s")
    return emu, recs
