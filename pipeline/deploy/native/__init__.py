"""``ppmseg-run``: build the native C++ runner (``runner.cc``) with a plain C++ compiler
against the libraries and headers of the installed TVM wheels.

The runner needs only ``libtvm_runtime`` (from ``apache-tvm``) and ``libtvm_ffi`` plus the
tvm-ffi headers (from ``apache-tvm-ffi``). Nothing here is specific to the host: pass another
compiler and a ``site-packages`` directory holding the wheels for another architecture to
cross-build, e.g. ``aarch64-linux-gnu-g++`` against ``pip install --platform
manylinux2014_aarch64 --target DIR apache-tvm apache-tvm-ffi``.

    ppmseg build-runner -o build/ppmseg-run
    ppmseg build-runner -o build/ppmseg-run-aarch64 --cxx aarch64-linux-gnu-g++ \\
        --site-packages .cache/emulator/site --rpath '$ORIGIN'
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

SOURCE = Path(__file__).with_name("runner.cc")
RUNNER = "ppmseg-run"
# -ffp-contract=off: the resize spells out PyTorch's fused multiply-adds with std::fma and
# must not have the compiler fuse anything else (results are compared bit for bit).
CXXFLAGS = ("-std=c++17", "-O2", "-ffp-contract=off", "-fno-fast-math", "-Wall", "-Wextra")


class NativeBuildError(RuntimeError):
    """The runner could not be built (no compiler, no wheel libraries, compile error)."""


@dataclass(frozen=True)
class Wheels:
    """Where the TVM wheels' headers and libraries are, for one architecture."""

    site_packages: Path
    tvm_lib: Path
    tvm_ffi_lib: Path
    includes: tuple[Path, ...]
    versions: dict[str, str] = field(default_factory=dict)

    @classmethod
    def find(cls, site_packages: str | Path | None = None) -> Wheels:
        """The wheels in ``site_packages`` (default: those this Python imports)."""
        if site_packages is None:
            spec = importlib.util.find_spec("tvm_ffi")
            if spec is None or spec.origin is None:
                raise NativeBuildError("apache-tvm-ffi is not installed (pip install apache-tvm-ffi)")
            site_packages = Path(spec.origin).parent.parent
        site = Path(site_packages).resolve()
        ffi_dir, tvm_dir = site / "tvm_ffi", site / "tvm"
        tvm_lib, ffi_lib = tvm_dir / "lib", ffi_dir / "lib"
        for lib in (tvm_lib / "libtvm_runtime.so", ffi_lib / "libtvm_ffi.so"):
            if not lib.is_file():
                raise NativeBuildError(f"{lib}: not found (install apache-tvm and apache-tvm-ffi into {site})")
        includes = tuple(p for p in (ffi_dir / "include", ffi_dir / "3rdparty" / "dlpack" / "include") if p.is_dir())
        if not (ffi_dir / "include" / "tvm" / "ffi" / "extra" / "module.h").is_file():
            raise NativeBuildError(f"{ffi_dir}/include: the tvm-ffi headers are missing")
        versions = {}
        for dist in metadata.distributions(path=[str(site)]):
            name = (dist.metadata["Name"] or "").lower().replace("_", "-")
            if name in ("apache-tvm", "apache-tvm-ffi"):
                versions[name] = dist.version
        return cls(site, tvm_lib, ffi_lib, includes, versions)


def compile_command(output: str | Path, wheels: Wheels, cxx: str = "g++",
                    rpath: tuple[str, ...] | None = None, extra_flags: tuple[str, ...] = ()) -> list[str]:
    """The single compile-and-link command. ``rpath`` defaults to the absolute library
    directories (the runner then works on this machine without LD_LIBRARY_PATH); use
    ``("$ORIGIN",)`` for a runner shipped next to copies of the two libraries."""
    if rpath is None:
        rpath = (str(wheels.tvm_lib), str(wheels.tvm_ffi_lib))
    defines = []
    for macro, dist in (("PPMSEG_TVM_VERSION", "apache-tvm"), ("PPMSEG_TVM_FFI_VERSION", "apache-tvm-ffi")):
        if dist in wheels.versions:  # the runner refuses artifacts built with other versions
            defines.append(f'-D{macro}="{wheels.versions[dist]}"')
    return [
        cxx, *CXXFLAGS, *extra_flags, *defines,
        *(f"-isystem{p}" for p in wheels.includes),
        str(SOURCE), "-o", str(output),
        f"-L{wheels.tvm_lib}", f"-L{wheels.tvm_ffi_lib}",
        # libtvm_runtime needs libtvm_ffi but its own RUNPATH ($ORIGIN) cannot find it:
        # link libtvm_ffi directly (never dropped) so the loader finds it through ours.
        "-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi", "-Wl,--as-needed",
        *(f"-Wl,-rpath,{r}" for r in rpath),
    ]


def build_runner(output: str | Path, *, cxx: str = "g++", site_packages: str | Path | None = None,
                 rpath: tuple[str, ...] | None = None, extra_flags: tuple[str, ...] = (),
                 timeout: float = 600) -> Path:
    """Compile ``runner.cc`` into ``output``; returns its path. Raises NativeBuildError
    with the compiler's first error line on failure."""
    if shutil.which(cxx) is None:
        raise NativeBuildError(f"{cxx}: compiler not found")
    wheels = Wheels.find(site_packages)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    cmd = compile_command(tmp, wheels, cxx, rpath, extra_flags)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            errors = [line for line in proc.stderr.splitlines() if "error" in line] or proc.stderr.splitlines()
            raise NativeBuildError(f"{cxx} failed: {errors[0] if errors else 'exit ' + str(proc.returncode)}")
        os.replace(tmp, output)
    except subprocess.TimeoutExpired:
        raise NativeBuildError(f"{cxx} timed out after {timeout:.0f} s") from None
    finally:
        tmp.unlink(missing_ok=True)
    return output
