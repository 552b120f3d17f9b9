"""Shared fixtures: the PaddleSeg reference outputs and a way to run the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
