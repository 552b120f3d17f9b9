"""The peer benchmark's pinned environments: ``ensure_env(name)`` is the Python an engine's
worker runs under (``pipeline.bench.engines.Engine.env``).

``main`` is this interpreter (``.venv``); ``ref`` is PaddleSeg's ``.venv-ref`` (``make
reference`` creates it); any other name is ``pipeline/bench/envs/<name>.txt``, a pinned
requirements file, installed into ``.venv-<name>`` on first use and again whenever the file
changes (a stamp in the environment holds the file's SHA-256). Creation runs under an
exclusive lock, so two processes asking at once install once; every step is bounded and a
failure is one line naming the install log.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.common.files import LockedError, exclusive_lock
from pipeline.common.paths import REF_PYTHON, ROOT

ENVS_DIR = Path(__file__).resolve().parent / "envs"
STAMP = ".requirements-sha256"
INSTALL_TIMEOUT_S = 1800.0  # pip over a slow mirror, torch's wheel included
LOCK_TIMEOUT_S = INSTALL_TIMEOUT_S + 120.0  # another process may be installing the same one


class EnvError(RuntimeError):
    """An environment that cannot be made: the message is one line."""


def env_dir(name: str, root: Path = ROOT) -> Path:
    return root / f".venv-{name}"


def ensure_env(name: str, log: Callable[[str], None] = print, *, root: Path = ROOT,
               requirements: Path | None = None) -> Path:
    """The Python of environment ``name``, created or brought up to date first if need be."""
    if name == "main":
        return Path(sys.executable)
    if name == "ref":
        if not REF_PYTHON.is_file():
            raise EnvError(f"{REF_PYTHON} missing: `make reference` builds the PaddleSeg environment")
        return REF_PYTHON
    req = requirements or ENVS_DIR / f"{name}.txt"
    if not req.is_file():
        raise EnvError(f"no environment {name!r}: {req} does not exist")
    venv = env_dir(name, root)
    python = venv / "bin" / "python"
    digest = hashlib.sha256(req.read_bytes()).hexdigest()
    if _stamp(venv) == digest and python.is_file():
        return python
    with exclusive_lock(venv.with_name(venv.name + ".lock"), venv.name, wait=LOCK_TIMEOUT_S):
        if _stamp(venv) != digest or not python.is_file():  # the lock's previous holder may have done it
            _install(venv, req, log)
            (venv / STAMP).write_text(digest + "\n")
    return python


def _stamp(venv: Path) -> str | None:
    try:
        return (venv / STAMP).read_text().strip()
    except OSError:
        return None


def _install(venv: Path, req: Path, log: Callable[[str], None]) -> None:
    log(f"{venv.name}: installing {req.name} (first use or changed pins)")
    (venv / STAMP).unlink(missing_ok=True)
    python = venv / "bin" / "python"
    steps = [[sys.executable, "-m", "venv", str(venv)]] if not python.is_file() else []
    steps.append([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", str(req)])
    venv.mkdir(parents=True, exist_ok=True)
    install_log = venv / "install.log"
    deadline = time.monotonic() + INSTALL_TIMEOUT_S
    t0 = time.monotonic()
    with open(install_log, "w") as out:
        for cmd in steps:
            try:
                code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=req.parent,
                                      timeout=max(1.0, deadline - time.monotonic())).returncode
            except subprocess.TimeoutExpired:
                raise EnvError(f"{venv.name}: `{' '.join(cmd[-3:])}` took over {INSTALL_TIMEOUT_S:.0f} s "
                               f"(log {install_log})") from None
            if code != 0:
                raise EnvError(f"{venv.name}: `{' '.join(cmd[-3:])}` failed: {_last_line(install_log)} "
                               f"(log {install_log})")
    log(f"{venv.name}: ready in {time.monotonic() - t0:.0f} s")


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or ["no output"])[-1][:300]


def main() -> int:
    """Create every pinned environment an engine uses (``make test`` runs this before pytest)."""
    from pipeline.bench.engines import ENGINES

    names = sorted({e.env for e in ENGINES.values()} - {"main", "ref"})
    try:
        for name in names:
            print(f"{name}: {ensure_env(name)}")
    except (EnvError, LockedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
