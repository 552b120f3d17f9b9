"""The fused inverted-residual kernel (``schedules/inverted_residual.py``) and the pass that
puts it in place (``pipeline/compile/fusion.py``): every residual unit shape of Tiny and Base
rewritten with the fusion equals PyTorch, on this machine (16-lane blocks) and on the
emulated SD855 (4-lane blocks). Its MetaSchedule template: tests/test_conv_template.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm

from model.pp_mobileseg import MV3Unit, ResidualUnit, get_config, make_divisible
from pipeline.compile.fold import fold_batchnorm
from pipeline.compile.frontend import from_torch
from pipeline.compile.passes import GraphOptions, rewrite
from pipeline.compile.tail import compose
from rpc import session
from rpc.linkers import build_config
from schedules import tuning
from tests.conftest import run_cli

FUSED = GraphOptions(fused=True)


def _random_unit(cin: int, unit: MV3Unit, seed: int) -> ResidualUnit:
    """A unit with random weights and BatchNorm statistics, so that the folded biases and the
    activations' clipping are exercised."""
    torch.manual_seed(seed)
    block = ResidualUnit(cin, unit).eval()
    with torch.no_grad():
        for module in block.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.5)
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return block


def _unit_shapes() -> list[tuple[int, MV3Unit]]:
    """Each distinct (input channels, unit) of Tiny and Base."""
    shapes = {}
    for name in ("tiny", "base"):
        cfg = get_config(name).backbone
        cin = make_divisible(cfg.channels[0])
        for stage in cfg.stages:
            for unit in stage:
                shapes[(cin, unit)] = None
                cin = make_divisible(unit.out)
    return list(shapes)


@pytest.mark.parametrize(("cin", "unit"), _unit_shapes(), ids=lambda v: str(v) if isinstance(v, int) else
                         f"e{v.expand}k{v.kernel}s{v.stride}{v.act}")
def test_fused_unit_equals_pytorch(cin, unit):
    """Every unit shape of both models (3x3 and 5x5, stride 1 and 2, ReLU and hardswish),
    rewritten with the fusion, untuned schedules, against PyTorch."""
    block = _random_unit(cin, unit, seed=cin + unit.expand)
    x = torch.randn(1, cin, 20, 28, generator=torch.Generator().manual_seed(1))
    mod = rewrite(from_torch(fold_batchnorm(block), tuple(x.shape)), FUSED, 16)
    assert "expand_depthwise_NCHWc" in mod.script()
    vm = tvm.relax.VirtualMachine(tuning.build(mod, tvm.target.Target({"kind": "llvm", "num-cores": 1})), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x.numpy()))[0].numpy()
    with torch.no_grad():
        want = block(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


class _AllUnits(torch.nn.Module):
    """Every unit shape on a slice of one input, the outputs flattened into one ``[1, N, 1, 1]``
    tensor: one "logits" tensor, which is what crosses RPC."""

    def __init__(self, shapes: list[tuple[int, MV3Unit]]) -> None:
        super().__init__()
        self.inputs = [cin for cin, _ in shapes]
        self.units = torch.nn.ModuleList(_random_unit(cin, unit, seed=i) for i, (cin, unit) in enumerate(shapes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [unit(x[:, :cin]).flatten() for unit, cin in zip(self.units, self.inputs, strict=True)]
        return torch.cat(outputs).reshape(1, -1, 1, 1)


def test_fused_units_on_the_emulated_sd855_equal_pytorch(emulated, tmp_path):
    shapes = _unit_shapes()
    model = _AllUnits(shapes).eval()
    x = torch.randn(1, max(cin for cin, _ in shapes), 12, 20, generator=torch.Generator().manual_seed(2))
    config = build_config("sd855", "local")
    network = compose(from_torch(fold_batchnorm(model), tuple(x.shape)), tuple(x.shape), "interpolate")
    mod = rewrite(network, FUSED, config.channel_block)
    assert mod.script().count("R.call_tir(cls.expand_depthwise_NCHWc") == len(shapes)
    library = tmp_path / "units.so"
    tvm.compile(mod, target=tvm.target.Target(config.target)).export_library(str(library), fcompile=config.fcompile)
    with session.connect("sd855") as s:
        s.load(library)
        got = s.run(x.numpy(), "logits")
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_the_fused_kernel_needs_the_blocked_layout(tmp_path):
    with pytest.raises(ValueError, match="needs the blocked layout"):
        GraphOptions(blocked=False, fused=True)
    proc = run_cli("compile", "--layout", "nchw", "--fuse", "-o", str(tmp_path / "unused"), check=False)
    assert proc.returncode == 2 and "--fuse" in proc.stderr
    assert "needs the blocked layout (--layout blocked)" in proc.stderr
    assert not (tmp_path / "unused").exists()
