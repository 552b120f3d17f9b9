"""Device profiles: one TOML file per device in ``rpc/profiles/``. Adding a phone
is adding a file."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

PROFILE_DIR = Path(__file__).with_name("profiles")


class DeviceError(ValueError):
    """An unknown or unusable device profile."""


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    tracker_key: str
    linker: str  # "native", or a cross linker named by later profiles
    threads: int
    target: dict = field(hash=False)

    def target_json(self) -> dict:
        """The LLVM target as TVM's JSON dict. ``native`` values are what LLVM detects
        on this machine; ``num-cores`` defaults to the cores this process may use
        (it sizes the parallel loops TVM generates)."""
        from tvm.target import codegen

        detect = {"mcpu": codegen.llvm_get_system_cpu, "mtriple": codegen.llvm_get_system_triple}
        target = {k: detect[k]() if v == "native" and k in detect else v for k, v in self.target.items()}
        target.setdefault("num-cores", len(os.sched_getaffinity(0)))
        return target

    def tvm_target(self):  # noqa: ANN201 - tvm.target.Target, imported lazily
        import tvm

        return tvm.target.Target(self.target_json())


def available() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def load_profile(name: str) -> DeviceProfile:
    path = PROFILE_DIR / f"{name}.toml"
    if not path.is_file():
        raise DeviceError(f"unknown device {name!r}; profiles: {', '.join(available())}")
    data = tomllib.loads(path.read_text())
    try:
        return DeviceProfile(**data)
    except TypeError as e:
        raise DeviceError(f"{path}: malformed profile ({e})") from None
