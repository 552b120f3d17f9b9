"""Latency profile by part of the network, like the paper's latency profile figure:
each part (stem and MobileNetV3 stages, Sea attention, AAM, head, upsampling tail) is
its own function of one profiling library, timed on the device with the inputs it
sees when the whole network runs on a real photograph.

The parts are imported from the same BatchNorm-folded PyTorch modules as the network,
so after fusion their kernels are the network's kernels and the tuning database
applies to them; the sum of the parts is reported beside the end-to-end time so that
any difference (kernels fused across a part boundary, per-call overhead) shows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from model.pp_mobileseg import PPMobileSeg
from pipeline.compile.tail import TAILS


@dataclass(frozen=True)
class Part:
    name: str  # function name in the profiling library
    label: str  # what the report calls it
    module: nn.Module | None  # None: the upsampling tail, emitted from pipeline.compile.tail


class _AAMInputs(nn.Module):
    """The AAM takes a list; export needs separate tensor arguments."""

    def __init__(self, aam: nn.Module) -> None:
        super().__init__()
        self.aam = aam

    def forward(self, x8: torch.Tensor, x16: torch.Tensor, x32: torch.Tensor) -> torch.Tensor:
        return self.aam([x8, x16, x32])


def network_parts(model: PPMobileSeg) -> list[Part]:
    """The parts in execution order (the model's own submodules, not copies of them)."""
    b = model.backbone
    return [
        Part("stem_stage1", "stem + MobileNetV3 stage 1", b.smb1),
        Part("stage2", "MobileNetV3 stage 2", b.smb2),
        Part("stage3", "MobileNetV3 stage 3", b.smb3),
        Part("sea1", "Sea attention 1", b.trans1),
        Part("stage4", "MobileNetV3 stage 4", b.smb4),
        Part("sea2", "Sea attention 2", b.trans2),
        Part("aam", "AAM", _AAMInputs(b.inj_module)),
        Part("head", "segmentation head", model.decode_head),
        Part("tail", "upsampling tail", None),
    ]


def part_inputs(model: PPMobileSeg, x: np.ndarray) -> dict[str, list[np.ndarray]]:
    """Each part's inputs when ``model`` runs on ``x`` (captured by forward pre-hooks)."""
    captured: dict[str, list[np.ndarray]] = {}

    def capture(name: str, tensors: list[torch.Tensor]) -> None:  # a pre-hook returning a value replaces args
        captured.setdefault(name, [t.numpy() for t in tensors])

    hooks = [p.module.register_forward_pre_hook(lambda _m, args, n=p.name: capture(n, args))
             for p in network_parts(model) if p.module is not None and p.name != "aam"]
    # The AAM's own forward gets the feature list (the export wrapper is not called here).
    hooks.append(model.backbone.inj_module.register_forward_pre_hook(lambda _m, args: capture("aam", args[0])))
    try:
        with torch.inference_mode():
            logits = model.decode_head(model.backbone(torch.from_numpy(x)))
    finally:
        for h in hooks:
            h.remove()
    captured["tail"] = [logits.numpy()]
    return captured


def profiling_module(model: PPMobileSeg, inputs: dict[str, list[np.ndarray]], input_size: tuple[int, int],
                     tails: dict[str, str]):  # noqa: ANN201 - tvm.IRModule, imported lazily
    """One Relax module with a function per part (``model`` BatchNorm-folded already);
    ``tails`` maps function names to upsampling modes (``{"tail": "vim"}``)."""
    from tvm import relax

    from pipeline.compile.frontend import from_torch

    bb = relax.BlockBuilder()
    for part in network_parts(model):
        if part.module is None:
            continue
        shapes = [tuple(a.shape) for a in inputs[part.name]]
        func = from_torch(part.module, *shapes)["main"]
        bb.add_func(func.with_attr("global_symbol", part.name), part.name)
    for name, mode in tails.items():
        logits = relax.Var("logits", relax.TensorType(inputs["tail"][0].shape, "float32"))
        with bb.function(name, [logits]):
            with bb.dataflow():
                out = bb.emit_output(TAILS[mode](bb, logits, input_size))
            bb.emit_func_output(out)
    return bb.get()


def time_parts(benchmark: Callable[[str, list[np.ndarray]], float], names: list[str],
               inputs: dict[str, list[np.ndarray]]) -> dict[str, float]:
    """Median ms of each function; ``benchmark(function, inputs)`` times one on the device.
    A tail function ``tail_<mode>`` takes the tail's inputs."""
    return {n: benchmark(n, inputs[n if n in inputs else "tail"]) for n in names}


def profile_parts(device, model: PPMobileSeg, x: np.ndarray, spec, work, number: int = 3,  # noqa: ANN001
                  repeat: int = 5) -> list[dict]:
    """Median ms of each part of the network on ``device`` (an ``rpc.connect.Device``), in the
    untuned build and with the work directory's database; with VIM, the plain tails too. The
    parts go through the graph passes of ``spec`` (the network's ``BuildSpec``), so that their
    kernels are the network's."""
    from pipeline.common.tvm_log import quiet_tvm
    from pipeline.compile.build import build_library, export, in_parallel
    from pipeline.compile.fold import fold_batchnorm
    from pipeline.compile.passes import rewrite
    from rpc.session import connect

    upsample = spec.upsample

    folded = fold_batchnorm(model)
    inputs = part_inputs(folded, x)
    ablation = {"tail_interpolate": "interpolate", "tail_interpolate_stock": "interpolate-stock"}
    tails = {"tail": upsample, **(ablation if upsample == "vim" else {})}
    labels = {p.name: p.label for p in network_parts(folded)}
    labels.update(tail=f"{upsample} tail" if upsample == "vim" else "interpolate + argmax tail",
                  tail_interpolate="interpolate + argmax tail, fused (ablation)",
                  tail_interpolate_stock="interpolate + argmax tail, stock ops (ablation)")
    names = [p.name for p in network_parts(folded) if p.module is not None] + list(tails)
    with quiet_tvm():
        mod = rewrite(profiling_module(folded, inputs, spec.input_size, tails), spec.graph, spec.channel_block)

    def build(name: str, database: Path | None) -> Path:
        path = work.library_path(f"profile-{name}")
        export(build_library(mod, device.config.target, database), path, device.config.linker)
        return path

    libraries = in_parallel({"untuned": lambda: build("untuned", None), "tuned": lambda: build("tuned", work.path)})
    times = {}
    with connect(device.key, device.tracker) as session:
        session.set_threads(device.threads)
        for name, path in libraries.items():
            session.load(path)
            times[name] = time_parts(
                lambda f, args: session.benchmark(args, f, number=1 if device.emulated else number,
                                                  repeat=repeat).median_ms, names, inputs)
    return [{"part": n, "label": labels[n], "untuned_ms": times["untuned"][n], "tuned_ms": times["tuned"][n]}
            for n in names]
