"""An emulated aarch64 device on this machine: qemu-user running an arm64 Python 3.11 with
the aarch64 TVM wheels, provisioned from Debian packages and PyPI wheels only.

Layout under the cache directory (``PPMSEG_EMULATOR_DIR``, default ``.cache/emulator``)::

    debs/      the arm64 .deb files (apt-get download)
    sysroot/   their contents (dpkg -x): the guest's /lib, /usr
    site/      aarch64 wheels (pip --platform ... --target)
    bin/       python3-<cpu>: shell wrappers running the guest Python under qemu
    stamp.json what was provisioned, with versions; provisioning is skipped when it matches

``ppmseg emulator`` (``make emulator``) provisions (if needed), verifies and prints timings.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rpc import CACHE

STAMP_FORMAT = "ppmseg-emulator/1"
PYTHON_VERSION = "3.11"
# The guest runs the same TVM as the host: an RPC server and its client must agree on the protocol.
WHEELS = (
    "apache-tvm==0.27.0.post1",
    "apache-tvm-ffi==0.1.14.post1",
    "numpy==2.4.6",
    "psutil==7.2.2",
    "cloudpickle==3.1.3",
    "tornado==6.6.1",
)
WHEEL_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux2014_aarch64")
# Python 3.11 and the shared libraries it and the TVM wheel load (Debian bookworm, arm64).
DEBS = (
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6", "libexpat1", "zlib1g",
    "libffi8", "libssl3", "libbz2-1.0", "liblzma5", "libsqlite3-0", "libstdc++6", "libgcc-s1", "libncursesw6",
    "libtinfo6", "libreadline8", "libuuid1", "libdb5.3", "libgdbm6", "libnsl2", "libtirpc3", "libcrypt1",
)
# Host tools: the emulator and the cross linker for libraries it loads.
TOOLS = {"qemu-aarch64": "qemu-user", "aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu"}
VERIFY_TIMEOUT = 120.0  # s; `import tvm` under qemu takes about 5 s
APT_TIMEOUT = 1800.0
PIP_TIMEOUT = 1800.0


class EmulatorError(RuntimeError):
    """The emulated device cannot be provisioned or does not work."""


def default_dir() -> Path:
    return Path(os.environ.get("PPMSEG_EMULATOR_DIR") or CACHE / "emulator")


@dataclass(frozen=True)
class Emulator:
    """A provisioned emulated aarch64 Python. ``python`` is a host-executable wrapper, so it
    can stand in for ``sys.executable`` (TVM's RPC server re-executes it for workers)."""

    root: Path
    qemu_cpu: str

    @property
    def sysroot(self) -> Path:
        return self.root / "sysroot"

    @property
    def site(self) -> Path:
        return self.root / "site"

    @property
    def python(self) -> Path:
        return self.root / "bin" / f"python3-{self.qemu_cpu}"

    def command(self, *args: str) -> list[str]:
        return [str(self.python), *args]

    def runpy_command(self, module: str, *args: str) -> list[str]:
        """Run ``python -m module args`` in the guest with ``sys.executable`` pointing at the
        wrapper: without binfmt_misc the kernel cannot exec the aarch64 python directly."""
        boot = (f"import runpy, sys; sys.executable = {str(self.python)!r}; sys.argv[0] = {module!r}; "
                f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)")
        return self.command("-c", boot, *args)

    def run(self, code: str, timeout: float = VERIFY_TIMEOUT, env: dict | None = None) -> str:
        """Run Python code in the guest; returns stdout. Bounded by ``timeout``."""
        try:
            proc = subprocess.run(self.command("-c", code), capture_output=True, text=True, timeout=timeout,
                                  env=env)
        except subprocess.TimeoutExpired:
            raise EmulatorError(f"emulated python did not finish within {timeout:.0f} s") from None
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise EmulatorError(f"emulated python failed ({proc.returncode}): {last}")
        return proc.stdout


def _wrapper_script(qemu: str, sysroot: Path, site: Path, cpu: str) -> str:
    # PYTHONPATH is replaced, not extended: host (x86_64) packages must never leak into the guest.
    py = sysroot / "usr" / "bin" / f"python{PYTHON_VERSION}"
    return ("#!/bin/sh\n"
            "# Written by rpc/emulator.py: the arm64 Python 3.11 under qemu-user.\n"
            f"export PYTHONPATH={shlex.quote(str(site))}\n"
            "export PYTHONNOUSERSITE=1\n"
            "unset PYTHONHOME\n"
            f"exec {shlex.quote(qemu)} -L {shlex.quote(str(sysroot))} -cpu {shlex.quote(cpu)} "
            f"{shlex.quote(str(py))} \"$@\"\n")


def _run(cmd: list[str], timeout: float, log: Callable[[str], None], cwd: Path | None = None) -> str:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
        log(f"$ {shlex.join(cmd)}  ({time.perf_counter() - t0:.1f} s)")
    except subprocess.TimeoutExpired:
        raise EmulatorError(f"{cmd[0]} did not finish within {timeout:.0f} s") from None
    except FileNotFoundError:
        raise EmulatorError(f"{cmd[0]} not found") from None
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise EmulatorError(f"{' '.join(cmd[:3])} ... failed ({proc.returncode}): {tail}")
    return proc.stdout


def _is_root() -> bool:
    return os.geteuid() == 0


def _expected_stamp() -> dict:
    return {"format": STAMP_FORMAT, "python": PYTHON_VERSION, "wheels": list(WHEELS), "debs": list(DEBS)}


def missing_tools() -> list[str]:
    """Debian packages of host tools (qemu-user, the aarch64 cross g++) not on PATH."""
    return sorted({pkg for exe, pkg in TOOLS.items() if shutil.which(exe) is None})


@contextmanager
def _lock(root: Path, timeout: float = 3600.0) -> Iterator[None]:
    """One provisioning at a time per cache directory (parallel test sessions, make -j)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EmulatorError(f"{root} is locked by another provisioning for {timeout:.0f} s") from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class _Apt:
    """apt-get with at most one `apt-get update` per provisioning."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log, self.updated = log, False

    def update(self) -> None:
        if not self.updated:
            _run(["apt-get", "update", "-qq"], APT_TIMEOUT, self.log)
            self.updated = True

    def retry_after_update(self, cmd: list[str], cwd: Path | None = None) -> None:
        try:
            _run(cmd, APT_TIMEOUT, self.log, cwd=cwd)
        except EmulatorError:
            if self.updated or not _is_root():
                raise
            self.update()  # stale or missing package lists
            _run(cmd, APT_TIMEOUT, self.log, cwd=cwd)


def _install_tools(apt: _Apt) -> None:
    pkgs = missing_tools()
    if not pkgs:
        return
    if not _is_root():
        raise EmulatorError(f"missing {', '.join(TOOLS)}: run as root `apt-get install {' '.join(pkgs)}`")
    apt.retry_after_update(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *pkgs])


def _provision_sysroot(root: Path, apt: _Apt) -> list[str]:
    foreign = subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True, text=True,
                             timeout=30).stdout.split()
    if "arm64" not in foreign:
        if not _is_root():
            raise EmulatorError("arm64 packages unavailable: run as root `dpkg --add-architecture arm64 && "
                                "apt-get update`")
        _run(["dpkg", "--add-architecture", "arm64"], 60, apt.log)
        apt.update()
    debs = root / "debs"
    shutil.rmtree(debs, ignore_errors=True)
    debs.mkdir(parents=True)
    apt.retry_after_update(["apt-get", "download", "-qq", *(f"{p}:arm64" for p in DEBS)], cwd=debs)
    files = sorted(p.name for p in debs.glob("*.deb"))
    tmp = root / "sysroot.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for name in files:
        _run(["dpkg", "-x", str(debs / name), str(tmp)], 300, lambda _m: None)
    # Precompile the guest's stdlib with the host's Python 3.11 (same bytecode): under qemu
    # compiling it on every start would cost seconds.
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j0", str(tmp / "usr/lib" / f"python{PYTHON_VERSION}")],
                   capture_output=True, timeout=600)
    shutil.rmtree(root / "sysroot", ignore_errors=True)
    tmp.rename(root / "sysroot")
    return files


def _provision_wheels(root: Path, log: Callable[[str], None]) -> None:
    tmp = root / "site.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-cache-dir",
           *(a for p in WHEEL_PLATFORMS for a in ("--platform", p)), "--only-binary=:all:",
           "--python-version", PYTHON_VERSION, "--implementation", "cp", "--target", str(tmp), *WHEELS]
    _run(cmd, PIP_TIMEOUT, log)
    shutil.rmtree(root / "site", ignore_errors=True)
    tmp.rename(root / "site")


def _write_wrapper(emu: Emulator) -> None:
    qemu = shutil.which("qemu-aarch64")
    if qemu is None:
        raise EmulatorError("qemu-aarch64 not found: install qemu-user (make emulator)")
    emu.python.parent.mkdir(parents=True, exist_ok=True)
    tmp = emu.python.with_suffix(".tmp")
    tmp.write_text(_wrapper_script(qemu, emu.sysroot, emu.site, emu.qemu_cpu))
    tmp.chmod(0o755)
    tmp.rename(emu.python)


def verify(emu: Emulator, timeout: float = VERIFY_TIMEOUT) -> dict:
    """Import TVM in the guest and report what it sees (bounded by ``timeout``)."""
    out = emu.run("import json, platform, sys, tvm, tvm_ffi, numpy; print(json.dumps({'machine': "
                  "platform.machine(), 'python': platform.python_version(), 'tvm': tvm.__version__, "
                  "'numpy': numpy.__version__}))", timeout=timeout)
    info = json.loads(out.strip().splitlines()[-1])
    if info["machine"] != "aarch64":
        raise EmulatorError(f"emulated python reports machine {info['machine']!r}, not aarch64")
    return info


def provisioned(root: Path | None = None) -> bool:
    root = Path(root) if root else default_dir()
    try:
        stamp = json.loads((root / "stamp.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return ({k: stamp.get(k) for k in _expected_stamp()} == _expected_stamp()
            and (root / "sysroot" / "usr" / "bin" / f"python{PYTHON_VERSION}").is_file() and (root / "site").is_dir())


def ensure(qemu_cpu: str = "cortex-a76", root: str | Path | None = None, force: bool = False,
           log: Callable[[str], None] = lambda _m: None) -> Emulator:
    """Provision the emulated device if needed (idempotent; installs qemu-user and the
    aarch64 cross g++ with apt-get when root) and return it. A fresh provisioning is
    verified by importing TVM under qemu."""
    root = Path(root) if root else default_dir()
    emu = Emulator(root.resolve(), qemu_cpu)
    with _lock(emu.root):
        apt = _Apt(log)
        _install_tools(apt)
        if force or not provisioned(emu.root):
            (emu.root / "stamp.json").unlink(missing_ok=True)
            t0 = time.perf_counter()
            files = _provision_sysroot(emu.root, apt)
            _provision_wheels(emu.root, log)
            _write_wrapper(emu)
            info = verify(emu)
            stamp = {**_expected_stamp(), "deb_files": files, "verified": info,
                     "seconds": round(time.perf_counter() - t0, 1), "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            (emu.root / "stamp.json").write_text(json.dumps(stamp, indent=2) + "\n")
            log(f"provisioned {emu.root} in {stamp['seconds']} s: {info}")
        if not emu.python.is_file() or str(shutil.which("qemu-aarch64")) not in emu.python.read_text():
            _write_wrapper(emu)  # another CPU, or qemu moved
    return emu


def provision(qemu_cpu: str = "cortex-a76", root: str | Path | None = None, force: bool = False,
              log: Callable[[str], None] = lambda _m: None) -> tuple[Emulator, dict, str]:
    """``ensure`` and a check that TVM imports under qemu: the emulator, what the check
    reported, and how it was obtained (a fresh provisioning's own check, or a new one)."""
    fresh = force or not provisioned(root)
    emu = ensure(qemu_cpu, root, force, log=log)
    if fresh:
        return emu, json.loads((emu.root / "stamp.json").read_text())["verified"], "provisioned and verified"
    t0 = time.perf_counter()
    info = verify(emu)
    return emu, info, f"cached; import tvm under qemu {time.perf_counter() - t0:.1f} s"
