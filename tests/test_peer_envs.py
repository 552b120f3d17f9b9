"""``pipeline.bench.envs``: a pinned environment is created on first use, reused while its
requirements file is unchanged, brought up to date when it changes, created once when two
processes ask at the same time, and a failure is one line. Real venvs and real pip installs
(a small pure-Python wheel)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.bench.envs import EnvError, ensure_env

ROOT = Path(__file__).resolve().parents[1]


def _version(python: Path, package: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True,
                          timeout=60).stdout.strip()


def test_created_once_reused_then_updated_when_the_pins_change(tmp_path: Path) -> None:
    req = tmp_path / "small.txt"
    req.write_text("six==1.16.0\n")
    logged: list[str] = []
    python = ensure_env("small", logged.append, root=tmp_path, requirements=req)
    assert python == tmp_path / ".venv-small" / "bin" / "python" and _version(python, "six") == "1.16.0"
    assert any("installing" in m for m in logged)

    logged.clear()
    assert ensure_env("small", logged.append, root=tmp_path, requirements=req) == python
    assert logged == []  # the stamp matches: nothing installed

    req.write_text("six==1.17.0\n")
    ensure_env("small", logged.append, root=tmp_path, requirements=req)
    assert _version(python, "six") == "1.17.0" and any("installing" in m for m in logged)


def test_two_processes_at_once_install_once(tmp_path: Path) -> None:
    req = tmp_path / "small.txt"
    req.write_text("six==1.17.0\n")
    code = ("import sys; from pathlib import Path; from pipeline.bench.envs import ensure_env; "
            "ensure_env('small', root=Path(sys.argv[1]), requirements=Path(sys.argv[2]))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(req)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    installs = sum(out.count("installing") for out, _ in outs)
    assert installs == 1, outs  # the second waited for the lock, then found the stamp
    assert _version(tmp_path / ".venv-small" / "bin" / "python", "six") == "1.17.0"


def test_a_failed_install_is_one_line_and_leaves_no_stamp(tmp_path: Path) -> None:
    req = tmp_path / "bad.txt"
    req.write_text("six==0.0.0.404\n")  # no such release
    with pytest.raises(EnvError) as err:
        ensure_env("bad", lambda _: None, root=tmp_path, requirements=req)
    message = str(err.value)
    assert "\n" not in message and "six" in message and "install.log" in message
    assert not (tmp_path / ".venv-bad" / ".requirements-sha256").exists()


def test_main_and_ref_are_the_existing_environments() -> None:
    assert ensure_env("main") == Path(sys.executable)
    with pytest.raises(EnvError, match="does not exist"):
        ensure_env("no-such-env")
