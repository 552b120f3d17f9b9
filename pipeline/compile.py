"""``ppmseg compile``: model -> Relax -> VIM tail -> library -> artifact directory."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from model.weights import load_model
from pipeline.artifact import BuildSpec, cached, sha256_file, write_artifact
from pipeline.graph import Upsample, compose, effective_upsample
from pipeline.prepare import fold_batchnorm
from pipeline.tvm_log import quiet_tvm
from rpc.linkers import BuildConfig, build_config
from schedules import tuning

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
    tracker: str | None = None  # a user's tracker (real devices); None: local mode (emulation)


def import_network(model, input_shape: tuple[int, int, int, int], frontend: str,  # noqa: ANN001 - nn.Module
                   onnx_path: Path):
    """The network, BatchNorm folded into the convolutions, as a Relax module through
    the chosen frontend (the ONNX file is kept: it is also what ONNX Runtime runs as a
    peer)."""
    from pipeline import frontend as fe

    model = fold_batchnorm(model)
    if frontend == "torch":
        return fe.from_torch(model, input_shape)
    if frontend == "onnx":
        fe.export_onnx(model, input_shape, onnx_path)
        return fe.from_onnx(onnx_path, input_shape)
    raise ValueError(f"unknown frontend {frontend!r}; choose one of {', '.join(FRONTENDS)}")


def build_spec(req: CompileRequest, cfg: BuildConfig, num_classes: int, mean: tuple, std: tuple) -> BuildSpec:
    return BuildSpec(
        model=req.model, num_classes=num_classes, input_size=tuple(req.input_size),
        upsample=effective_upsample(req.upsample, num_classes), frontend=req.frontend, device=cfg.device,
        target=cfg.target, weights_sha256=sha256_file(req.weights) if req.weights else None,
        mean=tuple(mean), std=tuple(std),
    )


def compile_artifact(req: CompileRequest, out_dir: str | Path, force: bool = False,
                     log: Callable[[str], None] = print) -> tuple[dict, bool]:
    """Build (or reuse) ``out_dir/model.so`` + ``meta.json``. Returns the metadata and
    whether an existing artifact was reused."""
    import tvm

    if req.frontend not in FRONTENDS:
        raise ValueError(f"unknown frontend {req.frontend!r}; choose one of {', '.join(FRONTENDS)}")
    cfg = build_config(req.device, tracker=req.tracker)
    model = load_model(req.model, req.weights)
    spec = build_spec(req, cfg, model.cfg.num_classes, model.cfg.mean, model.cfg.std)
    out_dir = Path(out_dir)
    if not force and (meta := cached(out_dir, spec)) is not None:
        log(f"{out_dir}: up to date (same model, weights, target, TVM and code); reusing it (--force rebuilds)")
        return meta, True
    if spec.upsample != req.upsample:
        log(f"{model.cfg.num_classes} classes: VIM is off below 30 classes, using interpolate")

    t0 = time.perf_counter()
    network = import_network(model, spec.input_shape, req.frontend, out_dir / ONNX_FILE)
    log(f"imported PP-MobileSeg-{req.model} {spec.input_size[0]}x{spec.input_size[1]} "
        f"through {req.frontend} in {time.perf_counter() - t0:.1f} s")
    t1 = time.perf_counter()
    module = compose(network, spec.input_shape, spec.upsample)
    with quiet_tvm():
        # The CPU pipeline with operator fusion: exactly the untuned build `make tune` compares.
        executable = tuning.build(module, tvm.target.Target(spec.target))
    log(f"built for {spec.device}{' (emulated)' if cfg.emulated else ''} ({spec.target.get('mtriple', '')}, "
        f"{spec.target.get('mcpu', '')}) in {time.perf_counter() - t1:.1f} s")
    with quiet_tvm():
        meta = write_artifact(out_dir, spec, lambda path: executable.export_library(path, fcompile=cfg.fcompile),
                              extra={"mode": cfg.mode, "emulated": cfg.emulated, "linker": cfg.linker,
                                     "weights": str(Path(req.weights).resolve()) if req.weights else None})
    log(f"wrote {out_dir}/model.so and meta.json")
    return meta, False
