"""What ``ppmseg info`` reports: parameters, FLOPs and per-stage output shapes."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from model.pp_mobileseg import PPMobileSeg

# The parts of the network a user thinks in (and that latency profiles group by).
STAGES = (
    "backbone.smb1", "backbone.smb2", "backbone.smb3", "backbone.trans1",
    "backbone.smb4", "backbone.trans2", "backbone.inj_module", "decode_head",
)


@dataclass
class ModelSummary:
    model: str
    num_classes: int
    input_size: tuple[int, int]
    params: int  # trainable parameters
    gflops: float  # convolutions and matmuls, one multiply-add = 2 FLOPs
    stages: dict[str, list[int]]  # output shape of each part

    def as_dict(self) -> dict:
        return asdict(self)


def trainable_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def summarize(model: PPMobileSeg, input_size: tuple[int, int]) -> ModelSummary:
    """Run one forward pass at ``input_size`` (H, W), counting FLOPs and shapes."""
    shapes: dict[str, list[int]] = {}
    modules = dict(model.named_modules())
    hooks = [modules[name].register_forward_hook(
        lambda _m, _i, out, name=name: shapes.__setitem__(name, list(out.shape))) for name in STAGES]
    counter = FlopCounterMode(display=False)
    try:
        with torch.inference_mode(), counter:
            model(torch.zeros(1, 3, *input_size))
    finally:
        for h in hooks:
            h.remove()
    return ModelSummary(
        model=model.cfg.name, num_classes=model.cfg.num_classes, input_size=tuple(input_size),
        params=trainable_params(model), gflops=round(counter.get_total_flops() / 1e9, 4), stages=shapes,
    )
