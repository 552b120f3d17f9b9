"""Compiled artifacts: ``DIR/model.so`` plus ``DIR/meta.json`` describing it.

An artifact is rebuilt only when something it depends on changes (model config,
weights, target, TVM version, output mode, frontend, input size, or this
project's compiler code): the inputs are hashed into a build key kept in
``meta.json``.
"""

from __future__ import annotations

import hashlib
import json
import platform
import struct
import subprocess
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from pipeline.common.files import atomic_path, write_text
from pipeline.common.paths import ROOT, SOURCE_DIRS
from pipeline.compile.passes import SHIPPED, GraphOptions

META_FORMAT = "ppmseg-artifact/1"
LIBRARY = "model.so"
META = "meta.json"
# ELF e_machine values, to refuse a library for another architecture before dlopen.
ELF_MACHINES = {0x3E: "x86_64", 0xB7: "aarch64"}
# What the runtimes read from meta.json; an artifact without them cannot be run.
REQUIRED_FIELDS = ("variant", "num_classes", "input_shape", "mean", "std", "device", "target", "tvm", "tvm_ffi",
                   "so_sha256")


class ArtifactError(ValueError):
    """A missing, tampered or mismatching artifact."""


@dataclass(frozen=True)
class BuildSpec:
    """Everything a compiled library depends on."""

    model: str
    num_classes: int
    input_size: tuple[int, int]  # (H, W)
    upsample: str  # "vim" | "interpolate"
    frontend: str  # "torch" | "onnx"
    device: str
    target: dict  # TVM target JSON
    weights_sha256: str | None  # None: the fixed random initialization
    mean: tuple[float, float, float]  # input normalization the runtime applies
    std: tuple[float, float, float]
    graph: GraphOptions = SHIPPED  # the graph passes
    channel_block: int = 4  # the device's vector lanes, the block of blocked convolutions
    other_sizes: tuple[tuple[int, int], ...] = ()  # entries beyond input_size, the default one

    def __post_init__(self) -> None:
        if self.other_sizes and self.frontend != "torch":  # ONNX imports' helper functions would share names
            raise ValueError("several input sizes need the torch frontend (--frontend torch)")

    @property
    def sizes(self) -> tuple[tuple[int, int], ...]:
        """Every entry's input size, the default first."""
        return (tuple(self.input_size), *self.other_sizes)

    @property
    def layout(self) -> str:
        return self.graph.layout(self.channel_block)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, 3, *self.input_size)

    def key(self) -> str:
        payload = {**asdict(self), "tvm": versions(), "code": source_digest()}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def versions() -> dict[str, str]:
    return {"tvm": metadata.version("apache-tvm"), "tvm_ffi": metadata.version("apache-tvm-ffi")}


def source_digest() -> str:
    h = hashlib.sha256()
    for d in SOURCE_DIRS:
        for path in sorted((ROOT / d).rglob("*")):
            if path.suffix in (".py", ".toml", ".txt") and "__pycache__" not in path.parts:
                h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True,
                           timeout=10).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def elf_machine(path: str | Path) -> str:
    """The architecture an ELF shared library was built for."""
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        raise ArtifactError(f"{path}: not an ELF shared library")
    return ELF_MACHINES.get(int.from_bytes(head[18:20], "little"), f"unknown ({head[18:20].hex()})")


def check_elf_layout(path: str | Path) -> None:
    """dlopen maps segments without checking the file is long enough (a truncated library
    kills the process with SIGBUS): the ELF64 header tables and loadable segments must lie
    inside the file. The native runner makes the same check."""
    data = Path(path).read_bytes()
    size = len(data)
    if size < 64 or data[4] != 2 or data[5] != 1:
        raise ArtifactError(f"{path}: not a 64-bit little-endian ELF library")
    e_type, = struct.unpack_from("<H", data, 16)
    if e_type != 3:
        raise ArtifactError(f"{path}: not an ELF shared library (e_type is not ET_DYN)")
    phoff, shoff = struct.unpack_from("<QQ", data, 32)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 54)

    def inside(offset: int, length: int) -> bool:
        return offset <= size and length <= size - offset

    corrupt = ArtifactError(f"{path}: truncated or corrupt ELF library")
    if phentsize < 56 or not inside(phoff, phentsize * phnum) or (shnum and not inside(shoff, shentsize * shnum)):
        raise corrupt
    for i in range(phnum):  # p_type, p_offset and p_filesz of each program header
        kind, offset, filesz = struct.unpack_from("<I4xQ16xQ", data, phoff + i * phentsize)
        if kind == 1 and not inside(offset, filesz):  # PT_LOAD
            raise corrupt


def entry_functions(sizes: list | tuple) -> list[dict]:
    """Each entry of a library with input ``sizes``: its input shape and the names of its
    functions. The first is ``main``/``logits`` (a one-size library is exactly that);
    the others are ``main_HxW``/``logits_HxW``."""
    return [{"input_shape": [1, 3, h, w], "main": "main" if i == 0 else f"main_{h}x{w}",
             "logits": "logits" if i == 0 else f"logits_{h}x{w}"} for i, (h, w) in enumerate(sizes)]


def entries(meta: dict) -> list[dict]:
    """An artifact's entries (an artifact from before several sizes has one, its input shape)."""
    return meta["entries"] if "entries" in meta else entry_functions([meta["input_shape"][2:]])


def read_meta(directory: str | Path) -> dict:
    path = Path(directory) / META
    if not Path(directory).is_dir():
        raise ArtifactError(f"{directory}: no such artifact directory")
    if not path.is_file():
        raise ArtifactError(f"{directory}: no {META} (not an artifact directory)")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise ArtifactError(f"{path}: not a {META_FORMAT} file")
    missing = [k for k in REQUIRED_FIELDS if k not in meta]
    if missing:
        raise ArtifactError(f"{path}: incomplete, no {', '.join(missing)}")
    shape = meta["input_shape"]
    if not (isinstance(shape, list) and len(shape) == 4 and shape[:2] == [1, 3]
            and all(isinstance(n, int) and n > 0 for n in shape)):
        raise ArtifactError(f"{path}: input_shape {shape!r} is not [1, 3, H, W]")
    listed = entries(meta)
    if not (isinstance(listed, list) and listed and listed[0].get("input_shape") == shape and all(
            isinstance(e, dict) and isinstance(e.get("main"), str) and isinstance(e.get("logits"), str)
            and isinstance(e.get("input_shape"), list) and len(e["input_shape"]) == 4 for e in listed)):
        raise ArtifactError(f"{path}: entries is not a list of shapes and functions, the default first")
    return meta


def cached(directory: str | Path, spec: BuildSpec) -> dict | None:
    """The existing artifact's metadata if it was built from exactly ``spec`` and
    its library is intact, else None."""
    try:
        meta = read_meta(directory)
    except ArtifactError:
        return None
    lib = Path(directory) / LIBRARY
    if meta.get("build_key") != spec.key() or not lib.is_file() or sha256_file(lib) != meta.get("so_sha256"):
        return None
    return meta


def write_artifact(directory: str | Path, spec: BuildSpec, export, extra: dict) -> dict:  # noqa: ANN001
    """Export a library with ``export(path)`` and write its ``meta.json``; both files
    appear only when complete (meta last, so a crash leaves no valid-looking artifact)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / META).unlink(missing_ok=True)
    with atomic_path(directory / LIBRARY) as tmp:
        export(str(tmp))
    lib = directory / LIBRARY
    meta = {
        "format": META_FORMAT,
        "model": "pp-mobileseg",
        "variant": spec.model,
        "num_classes": spec.num_classes,
        "input_shape": list(spec.input_shape),
        "entries": entry_functions(spec.sizes),
        "input_layout": "NCHW",
        "mean": list(spec.mean),
        "std": list(spec.std),
        "output": {"name": "labels", "dtype": "int32", "shape": [1, *spec.input_size]},
        "upsample": spec.upsample,
        "frontend": spec.frontend,
        "layout": spec.layout,
        "graph": asdict(spec.graph),
        "device": spec.device,
        "target": spec.target,
        "arch": elf_machine(lib),
        **versions(),
        "tuned": False,
        "database": None,
        "weights_sha256": spec.weights_sha256,
        "so_sha256": sha256_file(lib),
        "git_revision": git_revision(),
        "build_key": spec.key(),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        **extra,
    }
    write_text(directory / META, json.dumps(meta, indent=2) + "\n")
    return meta


def target_arch(target: dict) -> str:
    """The CPU architecture a target JSON generates code for."""
    return str(target.get("mtriple", platform.machine())).split("-")[0]


def verify(directory: str | Path, arch: str | None = None, runtime_versions: bool = True) -> dict:
    """Check an artifact before loading it: files present, library hash, TVM version
    (against this runtime's, unless ``runtime_versions`` is off: a bundle checks the wheels
    it ships instead) and architecture (``arch``, default this machine's). Returns the metadata."""
    directory = Path(directory)
    meta = read_meta(directory)
    lib = directory / LIBRARY
    if not lib.is_file():
        raise ArtifactError(f"{directory}: {LIBRARY} is missing")
    if sha256_file(lib) != meta.get("so_sha256"):
        raise ArtifactError(f"{lib}: SHA-256 does not match {META} (modified or from another build)")
    check_elf_layout(lib)
    ours = versions()
    for name in ("tvm", "tvm_ffi") if runtime_versions else ():
        if meta.get(name) != ours[name]:
            raise ArtifactError(f"{directory}: built with {name} {meta.get(name)}, this runtime has {ours[name]}")
    built, here = elf_machine(lib), arch or platform.machine()
    if built != here:
        where = "the device is" if arch else "this machine is"
        hint = "" if arch else " (run it on the device: --device)"
        raise ArtifactError(f"{lib}: built for {built}, {where} {here}{hint}")
    return meta


def verify_for_device(directory: str | Path, device: str, runtime_versions: bool = True) -> dict:
    """``verify`` against the architecture the artifact targets, after checking that it was
    compiled for ``device`` (a profile name)."""
    from rpc.devices import load_profile

    meta = read_meta(directory)
    name = load_profile(device).name  # an unknown device: DeviceError, one line
    if meta["device"] != name:
        raise ArtifactError(f"{directory}: compiled for device {meta['device']!r}, not {device!r} "
                            f"(compile with --device {device})")
    return verify(directory, arch=target_arch(meta["target"]), runtime_versions=runtime_versions)
