"""Device profiles: one TOML file per device in ``rpc/profiles/``. Adding a phone
is adding a file.

A profile says how to generate code (``[target]``), how to link it (``linker``: ``native``
for this machine's compiler, ``ndk`` for the Android NDK's clang++ named by ``TVM_NDK_CC``,
or the name of a cross compiler on PATH), which tracker key its RPC servers use and the
default thread count. An optional ``[emulation]`` table describes the same device emulated
on this machine (qemu-user): its target keys override ``[target]`` (same codegen, another
OS/ABI), with its own linker and qemu CPU model.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

PROFILE_DIR = Path(__file__).with_name("profiles")
# "device": the real device, through the user's tracker (TRACKER=host:port);
# "local": this machine's tracker, with the host server or the emulated device.
Mode = Literal["device", "local"]
MODES: tuple[str, ...] = ("device", "local")


class DeviceError(ValueError):
    """An unknown or unusable device profile."""


@dataclass(frozen=True)
class Emulation:
    """The device emulated on this machine."""

    linker: str  # cross compiler producing libraries the emulated system loads
    qemu_cpu: str  # qemu-aarch64 -cpu
    target: dict = field(default_factory=dict, hash=False)  # overrides of the profile's [target]
    description: str = ""
    servers: int = 1  # emulated servers `ppmseg tracker start` launches by default


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    tracker_key: str
    linker: str  # "native", "ndk" or a cross compiler on PATH
    threads: int
    target: dict = field(hash=False)
    emulation: Emulation | None = None
    # Nominal FP32 peak of one core, for "achieved vs peak" in reports; "native": this machine's.
    peak_gflops_per_thread: float | str | None = None
    # float32 lanes of one vector register: the channel block of blocked convolutions
    # (NCHW[b]c); "native": this machine's (16 with AVX-512, 8 with AVX2).
    channel_block: int | str = 4

    def target_json(self, emulated: bool = False, threads: int | None = None) -> dict:
        """The LLVM target as TVM's JSON dict (of the emulated device if ``emulated``).
        ``native`` values are what LLVM detects on this machine; ``num-cores`` (it sizes
        the parallel loops TVM generates) is ``threads`` when given, else the profile's
        own value, else the cores this process may use."""
        from tvm.target import codegen

        if emulated and self.emulation is None:
            raise DeviceError(f"device {self.name!r} has no [emulation] table")
        raw = {**self.target, **(self.emulation.target if emulated else {})}
        detect = {"mcpu": native_cpu, "mtriple": codegen.llvm_get_system_triple}
        target = {k: detect[k]() if v == "native" and k in detect else v for k, v in raw.items()}
        target.setdefault("num-cores", len(os.sched_getaffinity(0)))
        if threads is not None:
            target["num-cores"] = threads
        return target

    def tvm_target(self, emulated: bool = False, threads: int | None = None):  # noqa: ANN201 - lazy tvm import
        import tvm

        return tvm.target.Target(self.target_json(emulated, threads))

    def peak_gflops(self, threads: int) -> float | None:
        """Nominal FP32 peak of ``threads`` cores (None when the profile does not say)."""
        per = native_peak_gflops() if self.peak_gflops_per_thread == "native" else self.peak_gflops_per_thread
        return None if per is None else float(per) * threads

    def block(self) -> int:
        """The channel block of blocked convolutions on this device."""
        return native_vector_lanes() if self.channel_block == "native" else int(self.channel_block)

    @property
    def is_host(self) -> bool:
        """Code for this machine: runs in-process or on a host RPC server."""
        return self.linker == "native"


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def native_cpu() -> str:
    """LLVM's name for this machine's CPU (``znver4``, ``skylake-avx512``, ``cortex-a76``)."""
    from tvm.target import codegen

    return str(codegen.llvm_get_system_cpu())


def native_cpu_model() -> str:
    """The processor's model name from ``/proc/cpuinfo`` ("" where there is none)."""
    return next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), "")


def native_vector_lanes() -> int:
    """float32 lanes of this machine's widest vectors (16 AVX-512, 8 AVX2/FMA, 4 SSE or NEON)."""
    flags = next((line.split(":")[1].split() for line in _cpuinfo() if line.startswith("flags")), [])
    return 16 if "avx512f" in flags else 8 if "fma" in flags or "avx2" in flags else 4


def native_peak_gflops() -> float | None:
    """One x86 core's nominal FP32 peak: clock x vector lanes x 2 (FMA) x 2 FMA pipes, the
    pipe count of current server cores (Zen 4/5, Ice Lake and later). None off x86 Linux."""
    mhz = [float(line.split(":")[1]) for line in _cpuinfo() if line.startswith("cpu MHz")]
    if not mhz:
        return None
    return max(mhz) / 1e3 * native_vector_lanes() * 2 * 2


def available() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def _build(cls: type, data: dict, where: str):  # noqa: ANN202
    unknown = set(data) - {f.name for f in fields(cls)}
    if unknown:
        raise DeviceError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    try:
        return cls(**data)
    except TypeError as e:
        raise DeviceError(f"{where}: malformed profile ({e})") from None


def load_profile(name: str | DeviceProfile) -> DeviceProfile:
    if isinstance(name, DeviceProfile):
        return name
    path = PROFILE_DIR / f"{name}.toml"
    if not path.is_file():
        raise DeviceError(f"unknown device {name!r}; profiles: {', '.join(available())}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise DeviceError(f"{path}: {e}") from None
    if "emulation" in data:
        data["emulation"] = _build(Emulation, data["emulation"], f"{path} [emulation]")
    return _build(DeviceProfile, data, str(path))


def resolve_mode(tracker: str | None = None) -> Mode:
    """Real devices when a tracker is named (argument or ``TRACKER=host:port``), else the
    local tracker with this machine's servers and emulators."""
    return "device" if tracker or os.environ.get("TRACKER") else "local"
