"""``ppmseg package``: one self-contained ``bundle.tar.gz`` to copy onto a device.

The bundle holds a single top-level folder ``ppmseg-bundle/``::

    model.so, meta.json     the compiled artifact (the folder is the runner's ARTIFACT_DIR)
    ppmseg-run              the native runner (pipeline/deploy/native/runner.cc) for the artifact's CPU
    libtvm_runtime.so       the TVM runtime libraries it links (and whatever non-system
    libtvm_ffi.so           library they need, found by following DT_NEEDED)
    run.sh                  LD_LIBRARY_PATH=<bundle> ppmseg-run <bundle> "$@" (QEMU=... prefix)
    README.txt              how to run it, on Linux, under qemu-user, on a phone with adb
    SHA256SUMS              sha256sum -c SHA256SUMS after copying

How the runner is built depends on the artifact (``meta.json``):

- ``arch`` of this machine: the host's C++ compiler against the installed wheels;
- ``aarch64`` on another machine: ``aarch64-linux-gnu-g++`` against the emulator's aarch64
  wheels (``rpc.emulator`` provisions them if needed). These are glibc builds: aarch64 Linux
  and qemu-user, not Android;
- linked with the Android NDK (a real phone, ``mode == "device"``, linker ``ndk``): the NDK's
  clang++ (``TVM_NDK_CC``) against a libtvm_runtime/libtvm_ffi built with the NDK from TVM's
  source of the same version (``PPMSEG_ANDROID_TVM_LIBS``, a directory holding both). Neither
  can be fetched here; without them packaging fails with a one-line message.
"""

from __future__ import annotations

import hashlib
import io
import os
import platform
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.common.errors import message_line
from pipeline.common.files import atomic_path
from pipeline.compile.artifact import LIBRARY, META, ArtifactError, elf_machine, verify_for_device
from pipeline.deploy.native import RUNNER, NativeBuildError, Wheels, build_runner

BUNDLE_DIR = "ppmseg-bundle"
RUN_SCRIPT = "run.sh"
README = "README.txt"
CHECKSUMS = "SHA256SUMS"
SUFFIXES = (".tar.gz", ".tgz")
ANDROID_LIBS_ENV = "PPMSEG_ANDROID_TVM_LIBS"
TVM_LIBS = ("libtvm_runtime.so", "libtvm_ffi.so")
# Libraries every system of the kind provides: never bundled. libstdc++/libgcc_s come with
# any glibc distribution that runs C++; README.txt states the symbol versions required.
GLIBC_SYSTEM = frozenset({
    "libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1", "libstdc++.so.6", "libgcc_s.so.1",
    "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1",
})
ANDROID_SYSTEM = frozenset({"libc.so", "libm.so", "libdl.so", "liblog.so", "libz.so", "libandroid.so"})
UNAME = {"x86_64": "x86_64|amd64", "aarch64": "aarch64|arm64"}
READELF_TIMEOUT = 60.0


class PackageError(ValueError):
    """The bundle cannot be made (wrong device, missing artifact or toolchain); one line."""


@dataclass(frozen=True)
class Toolchain:
    """How to build the runner for an artifact and where its libraries come from."""

    kind: str  # "glibc" or "android"
    arch: str  # "x86_64" | "aarch64"
    cxx: str
    wheels: Wheels
    search: tuple[Path, ...]  # directories the bundled libraries are taken from
    system: frozenset[str] = field(default=GLIBC_SYSTEM)
    description: str = ""


def _fail(message: str) -> PackageError:
    return PackageError(message_line(message) or "packaging failed")


# ----------------------------------------------------------------------------- checks


def _check_output(out_path: Path) -> Path:
    if out_path.is_dir():
        raise _fail(f"{out_path}: is a directory; give the bundle file name, e.g. {out_path}/bundle.tar.gz")
    if not out_path.name.endswith(SUFFIXES):
        raise _fail(f"{out_path}: the bundle name must end in {' or '.join(SUFFIXES)}")
    if not out_path.parent.is_dir():
        raise _fail(f"{out_path}: directory {out_path.parent} does not exist")
    if not os.access(out_path.parent, os.W_OK):
        raise _fail(f"{out_path}: directory {out_path.parent} is not writable")
    return out_path


def _check_artifact(artifact_dir: Path, device: str) -> dict:
    if not artifact_dir.is_dir():
        raise _fail(f"{artifact_dir}: no such artifact directory (run `ppmseg compile ... -o {artifact_dir}`)")
    # The TVM versions are checked against the wheels the bundle ships (toolchain_for).
    meta = verify_for_device(artifact_dir, device, runtime_versions=False)
    arch = elf_machine(artifact_dir / LIBRARY)
    if meta.get("arch") != arch:
        raise _fail(f"{artifact_dir / LIBRARY}: library is {arch}, {META} says arch {meta.get('arch')}")
    if meta["arch"] not in UNAME:
        raise _fail(f"{artifact_dir / LIBRARY}: no runner for architecture {meta['arch']}")
    return meta


def is_android(meta: dict) -> bool:
    """Linked with the NDK for a real phone (not the emulated glibc device)."""
    triple = str(meta.get("target", {}).get("mtriple", ""))
    return meta.get("linker") == "ndk" or (meta.get("mode") == "device" and "android" in triple)


# ----------------------------------------------------------------------------- toolchains


def _check_versions(wheels: Wheels, meta: dict, where: str) -> None:
    for dist, key in (("apache-tvm", "tvm"), ("apache-tvm-ffi", "tvm_ffi")):
        have = wheels.versions.get(dist)
        if have is not None and have != meta.get(key):
            raise _fail(f"{where}: {dist} {have}, the artifact was built with {meta.get(key)}")


def _aarch64_site(meta: dict, log: Callable[[str], None]) -> Path:
    from rpc import emulator

    root = emulator.default_dir()
    if not emulator.provisioned(root):
        log(f"provisioning the aarch64 wheels in {root} (rpc.emulator; once)")
        cpu = str(meta.get("target", {}).get("mcpu") or "cortex-a76")
        try:
            emulator.ensure(cpu, root, log=log)
        except emulator.EmulatorError as e:
            raise _fail(f"aarch64 wheels: {e}") from None
    return root / "site"


def _android_toolchain(meta: dict) -> Toolchain:
    from rpc.linkers import ndk_compiler

    cc = ndk_compiler("building the runner for an Android phone")
    libs = os.environ.get(ANDROID_LIBS_ENV)
    if not libs:
        raise _fail(f"packaging for an Android phone needs libtvm_runtime.so and libtvm_ffi.so built with the NDK "
                    f"from TVM {meta.get('tvm')} source: set {ANDROID_LIBS_ENV} to the directory holding both")
    lib_dir = Path(libs).resolve()
    for name in TVM_LIBS:
        if not (lib_dir / name).is_file():
            raise _fail(f"{ANDROID_LIBS_ENV}={libs}: no {name} there (build TVM's runtime with the NDK)")
        if (got := elf_machine(lib_dir / name)) != meta["arch"]:
            raise _fail(f"{lib_dir / name}: built for {got}, the artifact is {meta['arch']}")
    # Headers: the tvm-ffi ones from the installed wheel (the same for every architecture).
    host = Wheels.find()
    wheels = Wheels(lib_dir, lib_dir, lib_dir, host.includes,
                    {"apache-tvm": str(meta.get("tvm")), "apache-tvm-ffi": str(meta.get("tvm_ffi"))})
    search = [lib_dir]
    resolved = Path(shutil.which(cc) or cc).resolve()
    # <ndk>/toolchains/llvm/prebuilt/<host>/bin/clang++ -> .../sysroot/usr/lib/aarch64-linux-android
    ndk_lib = resolved.parent.parent / "sysroot" / "usr" / "lib" / f"{meta['arch']}-linux-android"
    if ndk_lib.is_dir():
        search.append(ndk_lib)  # libc++_shared.so, when the runtime was built with c++_shared
    return Toolchain("android", meta["arch"], cc, wheels, tuple(search), ANDROID_SYSTEM,
                     f"Android NDK ({Path(cc).name}) against {lib_dir}")


def toolchain_for(meta: dict, log: Callable[[str], None] = lambda _m: None) -> Toolchain:
    """The compiler, wheels and library directories for the artifact's runner."""
    arch = meta["arch"]
    if is_android(meta):
        return _android_toolchain(meta)
    try:
        if arch == platform.machine():
            cxx = os.environ.get("CXX") or "g++"
            wheels = Wheels.find()
            description = f"{cxx} against the installed wheels"
        elif arch == "aarch64":
            cxx = "aarch64-linux-gnu-g++"
            wheels = Wheels.find(_aarch64_site(meta, log))
            description = f"{cxx} against the aarch64 PyPI wheels"
        else:
            raise _fail(f"no cross compiler for {arch} on this {platform.machine()} machine")
    except NativeBuildError as e:
        raise _fail(str(e)) from None
    _check_versions(wheels, meta, str(wheels.site_packages))
    return Toolchain("glibc", arch, cxx, wheels, (wheels.tvm_lib, wheels.tvm_ffi_lib), GLIBC_SYSTEM, description)


# ----------------------------------------------------------------------------- ELF


def _readelf(path: Path, *flags: str) -> str:
    exe = shutil.which("readelf") or shutil.which("aarch64-linux-gnu-readelf")
    if exe is None:
        raise _fail("readelf not found (apt-get install binutils)")
    proc = subprocess.run([exe, *flags, "--wide", str(path)], capture_output=True, text=True,
                          timeout=READELF_TIMEOUT)
    if proc.returncode != 0:
        raise _fail(f"readelf {path}: {(proc.stderr.strip().splitlines() or ['failed'])[0]}")
    return proc.stdout


def needed(path: Path) -> list[str]:
    """The DT_NEEDED entries of an ELF file (any architecture)."""
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", _readelf(path, "-d"))


def symbol_versions(paths: list[Path]) -> dict[str, str]:
    """The highest GLIBC / GLIBCXX / CXXABI symbol version the files require."""
    best: dict[str, tuple[int, ...]] = {}
    for p in paths:
        for name, ver in re.findall(r"Name: (GLIBC|GLIBCXX|CXXABI)_([0-9.]+)", _readelf(p, "-V")):
            v = tuple(int(x) for x in ver.split(".") if x)
            best[name] = max(best.get(name, v), v)
    return {k: f"{k}_{'.'.join(map(str, v))}" for k, v in sorted(best.items())}


# GLIBCXX_3.4.N -> the GCC release whose libstdc++ first provides it.
GLIBCXX_GCC = {26: "9", 28: "10", 29: "11", 30: "12", 31: "13", 32: "14", 33: "15"}


def describe_versions(versions: dict[str, str]) -> str:
    """``glibc >= 2.34, libstdc++ of GCC >= 11 (GLIBCXX_3.4.29)`` for README.txt."""
    parts = []
    if "GLIBC" in versions:
        parts.append(f"glibc >= {versions['GLIBC'].split('_', 1)[1]}")
    if "GLIBCXX" in versions:
        minor = int(versions["GLIBCXX"].rsplit(".", 1)[1])
        gcc = GLIBCXX_GCC.get(minor)
        parts.append(f"libstdc++ {'of GCC >= ' + gcc + ' ' if gcc else ''}({versions['GLIBCXX']})")
    return ", ".join(parts) or "nothing versioned"


def library_closure(roots: list[Path], toolchain: Toolchain) -> dict[str, Path]:
    """The libraries to bundle: every DT_NEEDED of ``roots`` (recursively) that is not a
    system library, taken from the toolchain's directories. One not found is an error."""
    found: dict[str, Path] = {}
    todo = [(r, n) for r in roots for n in needed(r)]
    while todo:
        who, name = todo.pop(0)
        if name in toolchain.system or name in found:
            continue
        path = next((d / name for d in toolchain.search if (d / name).is_file()), None)
        if path is None:
            raise _fail(f"{who.name} needs {name}, which is neither a system library nor in "
                        f"{', '.join(map(str, toolchain.search))}")
        if (got := elf_machine(path)) != toolchain.arch:
            raise _fail(f"{path}: built for {got}, the bundle is {toolchain.arch}")
        found[name] = path.resolve()
        todo.extend((path, n) for n in needed(path))
    return found


# ----------------------------------------------------------------------------- texts


def run_script(arch: str) -> str:
    return f"""#!/bin/sh
# ppmseg bundle: runs the bundled ppmseg-run on the bundled artifact (model.so + meta.json here).
#   ./run.sh --input IMAGE.ppm -o LABELS.pgm [--color COLOR.ppm] [--bench N]
#   ./run.sh --raw X.bin -o LABELS.pgm     (normalized float32 NCHW of the compiled shape)
# QEMU: a command prefix to run the {arch} runner on another machine, e.g.
#   QEMU="qemu-{arch} -L /usr/{arch}-linux-gnu -cpu cortex-a76" ./run.sh ...
here=$(cd "$(dirname "$0")" && pwd) || exit 1
LD_LIBRARY_PATH="$here${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"
export LD_LIBRARY_PATH
if [ -z "$QEMU" ]; then
  machine=$(uname -m)
  case "$machine" in
    {UNAME[arch]}) ;;
    *) echo "run.sh: error: this bundle is for {arch}, this machine is $machine (set QEMU, see README.txt)" >&2
       exit 1 ;;
  esac
fi
exec $QEMU "$here/{RUNNER}" "$here" "$@"
"""


def readme(meta: dict, toolchain: Toolchain, files: list[str], versions: dict[str, str]) -> str:
    h, w = meta["input_shape"][2:]
    arch, tvm_v, ffi_v = toolchain.arch, meta.get("tvm"), meta.get("tvm_ffi")
    cpu = str(meta.get("target", {}).get("mcpu") or "max")
    head = (f"PP-MobileSeg-{meta.get('variant')} compiled with TVM {tvm_v} (tvm-ffi {ffi_v}) for device "
            f"{meta.get('device')!r}\n"
            f"input {h}x{w}, {meta.get('num_classes')} classes, {meta.get('upsample')} upsampling, "
            f"target {meta.get('target', {}).get('mtriple')} {meta.get('target', {}).get('mcpu', '')}\n"
            f"runner built with {toolchain.description}\n\n"
            f"Files: {', '.join(files)}\n"
            "Check them after copying: sha256sum -c SHA256SUMS\n\n"
            "Run (from any directory; paths are relative to where you are):\n"
            "  ppmseg-bundle/run.sh --input photo.ppm -o labels.pgm [--color color.ppm]\n"
            "  ppmseg-bundle/run.sh --raw x.bin -o labels.pgm       (float32 [1,3,H,W], no header)\n"
            "  ppmseg-bundle/run.sh --raw x.bin --bench 50          (median and p90 latency)\n"
            "  ppmseg-bundle/run.sh --input photos/ -o out/         (every *.ppm of a folder, library\n"
            "                                                        loaded once: out/<name>.pgm)\n"
            "Input images are binary PPM (P6): e.g. `convert photo.jpg photo.ppm` or Pillow's "
            "Image.save('photo.ppm').\n"
            "The label map is a PGM (P5), class ids as grey levels. TVM_NUM_THREADS=1 runs one "
            "thread (the paper's protocol).\n\n")
    phone = ("On a phone with adb (USB debugging on):\n"
             "  tar xzf bundle.tar.gz\n"
             "  adb push ppmseg-bundle /data/local/tmp/\n"
             "  adb push photo.ppm /data/local/tmp/\n"
             "  adb shell 'cd /data/local/tmp && chmod 755 ppmseg-bundle/run.sh ppmseg-bundle/ppmseg-run && "
             "TVM_NUM_THREADS=1 taskset 80 ppmseg-bundle/run.sh --input photo.ppm -o labels.pgm'\n"
             "  adb pull /data/local/tmp/labels.pgm\n"
             "(taskset 80 pins the run to CPU 7, the Snapdragon 855's prime Cortex-A76 core.)\n\n")
    if toolchain.kind == "android":
        return head + ("This bundle was linked with the Android NDK (bionic libc): it runs on an "
                       "Android arm64 phone.\n\n") + phone
    body = (f"This bundle is built for {arch} Linux with glibc. Its runner and libraries need "
            f"{describe_versions(versions)}.\n")
    if arch == "aarch64":
        body += (
            "\nIT DOES NOT RUN ON ANDROID. The runner and libtvm_runtime/libtvm_ffi in this bundle are "
            "glibc builds:\nthey run on aarch64 Linux (Debian, Ubuntu, a Raspberry Pi OS 64-bit, a phone's "
            "Linux chroot)\nand under qemu-user, nothing else. An Android phone has bionic, not glibc, and "
            "will refuse them.\n\n"
            "Under qemu-user on an x86_64 machine (Debian: apt-get install qemu-user g++-aarch64-linux-gnu,\n"
            "which brings the aarch64 glibc in /usr/aarch64-linux-gnu):\n"
            f"  QEMU=\"qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu {cpu}\" ppmseg-bundle/run.sh --input photo.ppm "
            "-o labels.pgm\n"
            "Timings under qemu measure the emulator, not a phone.\n\n"
            "For an Android phone (Snapdragon 855) the runner AND libtvm_runtime.so/libtvm_ffi.so must be "
            f"built with the\nAndroid NDK from TVM's source of the same version (TVM {tvm_v}, tvm-ffi {ffi_v}); "
            "the PyPI wheels\nused here are glibc-only. Then compile for the real phone (TVM_NDK_CC=<ndk clang++>, "
            "TRACKER=host:port,\n`ppmseg compile --device sd855`) and package with TVM_NDK_CC and "
            f"{ANDROID_LIBS_ENV}=<dir with the NDK-built\nlibtvm_runtime.so and libtvm_ffi.so>. "
            "That bundle is copied to the phone like this:\n\n" + phone)
    else:
        body += (f"The code in model.so was generated for the {cpu} CPU of the machine that compiled it: "
                 "another CPU needs the same\ninstruction set extensions (else SIGILL; compile on that machine "
                 "instead).\n" if meta.get("device") == "host" else "")
        body += (f"\nRun it on an {arch} Linux machine. For a phone, compile for its device "
                 "(`ppmseg compile --device sd855`)\nand package that artifact instead.\n")
    return head + body


# ----------------------------------------------------------------------------- bundle


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int, mtime: float) -> None:
    info = tarfile.TarInfo(f"{BUNDLE_DIR}/{name}")
    info.size, info.mode, info.mtime = len(data), mode, int(mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def package(artifact_dir: str | Path, device: str, out_path: str | Path,
            log: Callable[[str], None] = lambda _m: None) -> Path:
    """Write ``out_path`` (a ``.tar.gz``) holding the artifact compiled for ``device``, the
    runner and runtime libraries for its architecture, ``run.sh`` and ``README.txt`` under
    one folder ``ppmseg-bundle/``. The file appears only when complete. Raises
    PackageError (or ArtifactError / DeviceError, all ValueError) with a one-line message."""
    artifact_dir, out_path = Path(artifact_dir), Path(out_path)
    _check_output(out_path)
    try:
        meta = _check_artifact(artifact_dir, device)
    except ArtifactError as e:
        raise _fail(str(e)) from None
    toolchain = toolchain_for(meta, log)
    with tempfile.TemporaryDirectory(prefix="ppmseg-package-") as tmp:
        runner = Path(tmp) / RUNNER
        t0 = time.perf_counter()
        try:
            build_runner_for(runner, toolchain)
        except NativeBuildError as e:
            raise _fail(str(e)) from None
        log(f"built {RUNNER} for {toolchain.arch} with {toolchain.description} in {time.perf_counter() - t0:.1f} s")
        libs = library_closure([runner, artifact_dir / LIBRARY], toolchain)
        for name in TVM_LIBS:
            if name not in libs:
                raise _fail(f"{RUNNER} does not link {name}; refusing an incomplete bundle")
        binaries = {LIBRARY: artifact_dir / LIBRARY, RUNNER: runner, **libs}
        versions = symbol_versions(list(binaries.values())) if toolchain.kind == "glibc" else {}
        model_so = (artifact_dir / LIBRARY).read_bytes()
        if hashlib.sha256(model_so).hexdigest() != meta.get("so_sha256"):
            raise _fail(f"{artifact_dir / LIBRARY}: changed while packaging")
        contents: dict[str, tuple[bytes, int]] = {
            LIBRARY: (model_so, 0o644),
            META: ((artifact_dir / META).read_bytes(), 0o644),
            RUNNER: (runner.read_bytes(), 0o755),
            **{name: (path.read_bytes(), 0o755) for name, path in sorted(libs.items())},
            RUN_SCRIPT: (run_script(toolchain.arch).encode(), 0o755),
        }
        files = [*contents, README, CHECKSUMS]
        contents[README] = (readme(meta, toolchain, files, versions).encode(), 0o644)
        sums = "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, (data, _) in contents.items())
        contents[CHECKSUMS] = (sums.encode(), 0o644)
        mtime = time.time()
        with atomic_path(out_path) as part:
            with tarfile.open(part, "w:gz", format=tarfile.PAX_FORMAT) as tar:
                info = tarfile.TarInfo(BUNDLE_DIR)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(mtime)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info)
                for name, (data, mode) in contents.items():
                    _add(tar, name, data, mode, mtime)
            part.chmod(0o644)
    log(f"wrote {out_path} ({out_path.stat().st_size / 1e6:.1f} MB): {', '.join(files)}")
    return out_path


def build_runner_for(output: Path, toolchain: Toolchain) -> Path:
    """The runner for ``toolchain``, finding its libraries through ``$ORIGIN`` (and run.sh's
    LD_LIBRARY_PATH). The Android branch is untested here: no NDK can be fetched on these
    machines."""
    if toolchain.kind == "glibc":
        return build_runner(output, cxx=toolchain.cxx, site_packages=toolchain.wheels.site_packages,
                            rpath=("$ORIGIN",))
    from pipeline.deploy.native import compile_command

    cmd = compile_command(output, toolchain.wheels, toolchain.cxx, rpath=("$ORIGIN",))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NativeBuildError(f"{toolchain.cxx}: {e}") from None
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if "error" in line] or proc.stderr.splitlines()
        raise NativeBuildError(f"{toolchain.cxx} failed: {errors[0] if errors else 'exit ' + str(proc.returncode)}")
    return output
