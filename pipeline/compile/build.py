"""Building a library: the network imported with BatchNorm folded, given its output tail,
compiled for a target (with a tuning database or without) and written as an artifact.
``ppmseg compile``, the tuning job and the benchmark all build through these functions.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import tvm

from model.weights import load_model
from pipeline.common.shapes import size_text
from pipeline.common.tvm_log import quiet_tvm
from pipeline.compile.artifact import BuildSpec, cached, sha256_file, write_artifact
from pipeline.compile.fold import fold_batchnorm
from pipeline.compile.passes import SHIPPED, GraphOptions, rewrite
from pipeline.compile.tail import Upsample, compose_entries, effective_upsample
from rpc.linkers import BuildConfig, build_config, fcompile_for
from schedules import tuning

T = TypeVar("T")

FRONTENDS = ("torch", "onnx")
ONNX_FILE = "model.onnx"


@dataclass(frozen=True)
class CompileRequest:
    model: str = "tiny"
    device: str = "host"
    upsample: Upsample = "vim"
    frontend: str = "torch"
    weights: Path | None = None
    input_size: tuple[int, int] = (512, 512)
    other_sizes: tuple[tuple[int, int], ...] = ()  # more entries (pipeline.common.shapes)
    tracker: str | None = None  # a user's tracker (real devices); None: local mode (emulation)
    graph: GraphOptions = SHIPPED


def import_network(model, input_shape: tuple[int, int, int, int], frontend: str,  # noqa: ANN001 - nn.Module
                   onnx_path: Path) -> tvm.IRModule:
    """The network, BatchNorm folded into the convolutions, as a Relax module through
    the chosen frontend (the ONNX file is kept: it is also what ONNX Runtime runs as a
    peer)."""
    from pipeline.compile import frontend as fe

    model = fold_batchnorm(model)
    if frontend == "torch":
        return fe.from_torch(model, input_shape)
    if frontend == "onnx":
        fe.export_onnx(model, input_shape, onnx_path)
        return fe.from_onnx(onnx_path, input_shape)
    raise ValueError(f"unknown frontend {frontend!r}; choose one of {', '.join(FRONTENDS)}")


def import_networks(model, spec: BuildSpec, onnx_path: Path) -> dict[tuple[int, int], tvm.IRModule]:  # noqa: ANN001
    """The network imported at each of ``spec``'s input sizes."""
    return {size: import_network(model, (1, 3, *size), spec.frontend, onnx_path) for size in spec.sizes}


def with_tail(networks: dict[tuple[int, int], tvm.IRModule] | tvm.IRModule, spec: BuildSpec,
              upsample: Upsample | None = None) -> tvm.IRModule:
    """``main(x) -> labels`` and ``logits(x)`` (and each other size's pair) around the imported
    network(s) (one module: ``spec``'s default size): ``spec``'s tail (or ``upsample``),
    then ``spec``'s graph passes."""
    if isinstance(networks, tvm.IRModule):
        networks = {tuple(spec.input_size): networks}
    with quiet_tvm():
        module = compose_entries(networks, upsample or spec.upsample)
        return rewrite(module, spec.graph, spec.channel_block)


def network_module(model, spec: BuildSpec, onnx_path: Path) -> tvm.IRModule:  # noqa: ANN001 - nn.Module
    """The module a library of ``spec`` is built from: imported, tail, graph passes."""
    return with_tail(import_networks(model, spec, onnx_path), spec)


def build_spec(variant: str, model, input_size: tuple[int, int], config: BuildConfig,  # noqa: ANN001
               weights: Path | None, upsample: Upsample = "vim", frontend: str = "torch",
               graph: GraphOptions = SHIPPED, other_sizes: tuple[tuple[int, int], ...] = ()) -> BuildSpec:
    """What a library of ``model`` (a loaded PPMobileSeg) built for ``config``'s device
    depends on; VIM falls back to interpolation below 30 classes."""
    return BuildSpec(
        model=variant, num_classes=model.cfg.num_classes, input_size=tuple(input_size),
        upsample=effective_upsample(upsample, model.cfg.num_classes), frontend=frontend, device=config.device,
        target=config.target, weights_sha256=sha256_file(weights) if weights else None,
        mean=tuple(model.cfg.mean), std=tuple(model.cfg.std), graph=graph, channel_block=config.channel_block,
        other_sizes=tuple(tuple(s) for s in other_sizes),
    )


def build_library(module: tvm.IRModule, target: dict, database: Path | None = None) -> tvm.runtime.Executable:
    """The CPU pipeline with operator fusion; with ``database``, every kernel it holds gets
    its best measured schedule (``schedules.tuning.build``)."""
    with quiet_tvm():
        return tuning.build(module, tvm.target.Target(target), database)


def in_parallel(jobs: dict[str, Callable[[], T]]) -> dict[str, T]:
    """Independent builds at once, one thread per core (TVM and the linker release the GIL:
    two Tiny builds took 9.0 s together against 8.7 s for one). Results by name."""
    workers = max(1, min(len(jobs), len(os.sched_getaffinity(0))))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
    return {name: f.result() for name, f in futures.items()}


def export(executable: tvm.runtime.Executable, path: str | Path, linker: str) -> None:
    """``export_library`` with the device's linker (a fresh fcompile each time: TVM's cross
    compiler appends to its options in place)."""
    with quiet_tvm():
        executable.export_library(str(path), fcompile=fcompile_for(linker))


def write_library(out_dir: Path, spec: BuildSpec, executable: tvm.runtime.Executable, linker: str,
                  extra: dict) -> dict:
    """``out_dir/model.so`` + ``meta.json`` (``extra`` added to the metadata)."""
    return write_artifact(out_dir, spec, lambda path: export(executable, path, linker), extra)


def compile_artifact(req: CompileRequest, out_dir: str | Path, force: bool = False,
                     log: Callable[[str], None] = print) -> tuple[dict, bool]:
    """Build (or reuse) ``out_dir/model.so`` + ``meta.json``. Returns the metadata and
    whether an existing artifact was reused."""
    if req.frontend not in FRONTENDS:
        raise ValueError(f"unknown frontend {req.frontend!r}; choose one of {', '.join(FRONTENDS)}")
    cfg = build_config(req.device, tracker=req.tracker)
    model = load_model(req.model, req.weights)
    spec = build_spec(req.model, model, req.input_size, cfg, req.weights, req.upsample, req.frontend, req.graph,
                      req.other_sizes)
    out_dir = Path(out_dir)
    if not force and (meta := cached(out_dir, spec)) is not None:
        log(f"{out_dir}: up to date (same model, weights, target, TVM and code); reusing it (--force rebuilds)")
        return meta, True
    if spec.upsample != req.upsample:
        log(f"{model.cfg.num_classes} classes: VIM is off below 30 classes, using interpolate")

    t0 = time.perf_counter()
    module = network_module(model, spec, out_dir / ONNX_FILE)
    log(f"imported PP-MobileSeg-{req.model} {size_text(spec.sizes)} "
        f"through {req.frontend} in {time.perf_counter() - t0:.1f} s")
    t1 = time.perf_counter()
    # Exactly the untuned build `make tune` compares.
    executable = build_library(module, spec.target)
    log(f"built for {spec.device}{' (emulated)' if cfg.emulated else ''} ({spec.target.get('mtriple', '')}, "
        f"{spec.target.get('mcpu', '')}) in {time.perf_counter() - t1:.1f} s")
    meta = write_library(out_dir, spec, executable, cfg.linker,
                         {"mode": cfg.mode, "emulated": cfg.emulated, "linker": cfg.linker,
                          "weights": str(Path(req.weights).resolve()) if req.weights else None})
    log(f"wrote {out_dir}/model.so and meta.json")
    return meta, False
