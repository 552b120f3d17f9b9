"""How to build for a device: its target JSON and the ``fcompile`` that links the library
(``export_library(path, fcompile=...)``), for the real device or its emulation."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field

from rpc.devices import DeviceError, DeviceProfile, Mode, load_profile, resolve_mode

NDK_HINT = ("set TVM_NDK_CC to the Android NDK's clang++ (e.g. <ndk>/toolchains/llvm/prebuilt/linux-x86_64/bin/"
            "aarch64-linux-android28-clang++)")


class LinkerError(DeviceError):
    """The linker a device needs is missing."""


@dataclass(frozen=True)
class BuildConfig:
    device: str
    mode: Mode
    emulated: bool
    target: dict = field(hash=False)  # TVM target JSON
    linker: str  # "native", "ndk" or the cross compiler
    fcompile: Callable | None = field(default=None, hash=False, compare=False)  # None: TVM's default (host g++)
    tracker_key: str = ""
    channel_block: int = 4  # float32 lanes per vector: the block of blocked convolutions


def ndk_compiler(purpose: str = "linking for Android") -> str:
    """The Android NDK's clang++ named by ``TVM_NDK_CC``; a one-line error saying what to
    set when it is missing or not an executable."""
    cc = os.environ.get("TVM_NDK_CC")
    if not cc:
        raise LinkerError(f"{purpose} needs the NDK: {NDK_HINT}")
    if not (os.path.isfile(cc) and os.access(cc, os.X_OK)) and shutil.which(cc) is None:
        raise LinkerError(f"TVM_NDK_CC={cc} is not an executable; {NDK_HINT}")
    return cc


def _ndk_fcompile() -> Callable:
    cc = ndk_compiler()
    from tvm.support import cc as _cc
    from tvm.support import ndk

    # ndk.create_shared reads TVM_NDK_CC at call time; its target-triple probe was fixed at import.
    def fcompile(output, objects, options=None):  # noqa: ANN001, ANN202
        return ndk.create_shared(output, objects, options)

    fcompile.output_format = "so"
    fcompile.get_target_triple = _cc.get_target_by_dump_machine(cc)
    return fcompile


def _cross_fcompile(compiler: str) -> Callable:
    if shutil.which(compiler) is None:
        raise LinkerError(f"cross linker {compiler} not found: run `make emulator` (as root it installs "
                          f"g++-aarch64-linux-gnu) or apt-get install the package providing it")
    from tvm.support import cc as _cc

    # A fresh closure per build: cross_compiler() appends export options to its base list in place.
    return _cc.cross_compiler(compiler, get_target_triple=_cc.get_target_by_dump_machine(compiler))


def fcompile_for(linker: str) -> Callable | None:
    """The ``export_library`` fcompile for a profile's linker name (None: the host's g++)."""
    if linker == "native":
        return None
    if linker == "ndk":
        return _ndk_fcompile()
    return _cross_fcompile(linker)


def build_config(device: str | DeviceProfile, mode: Mode | None = None, tracker: str | None = None,
                 check_linker: bool = True, threads: int | None = None) -> BuildConfig:
    """Target and linker for ``device``: the real device in mode ``device`` (a tracker was
    named), its ``[emulation]`` in mode ``local``. Host-like profiles are the same in both.
    ``threads`` sets the target's ``num-cores`` (see ``DeviceProfile.target_json``).
    ``check_linker=False`` skips building the fcompile (e.g. to only show the target)."""
    profile = load_profile(device)
    mode = mode or resolve_mode(tracker)
    emulated = mode == "local" and profile.emulation is not None
    if mode == "local" and not profile.is_host and profile.emulation is None:
        raise DeviceError(f"device {profile.name!r} has no emulation; run it through a tracker (TRACKER=host:port)")
    linker = profile.emulation.linker if emulated else profile.linker
    return BuildConfig(device=profile.name, mode=mode, emulated=emulated, target=profile.target_json(emulated, threads),
                       linker=linker, fcompile=fcompile_for(linker) if check_linker else None,
                       tracker_key=profile.tracker_key, channel_block=profile.block())
