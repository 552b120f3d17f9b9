"""The profiling library's parts compute exactly the network's parts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from model.upsample import interpolate_labels, vim_labels
from model.weights import load_model
from pipeline.compile.fold import fold_batchnorm
from pipeline.tune.parts import network_parts, part_inputs, profiling_module
from rpc.devices import load_profile
from schedules.tuning import build

SIZE = (64, 96)


@pytest.fixture(scope="module")
def profiled():
    model = fold_batchnorm(load_model("tiny", None))
    x = np.random.default_rng(0).standard_normal((1, 3, *SIZE)).astype(np.float32)
    inputs = part_inputs(model, x)
    mod = profiling_module(model, inputs, SIZE, {"tail": "vim", "tail_interpolate": "interpolate"})
    vm = relax.VirtualMachine(build(mod, load_profile("host").tvm_target()), tvm.cpu())
    return model, x, inputs, vm


def _call(vm, name: str, arrays: list[np.ndarray]) -> np.ndarray:
    out = vm[name](*[tvm.runtime.tensor(a, tvm.cpu()) for a in arrays])
    return (out if hasattr(out, "numpy") else out[0]).numpy()


def test_parts_chain_through_the_whole_network(profiled):
    model, x, inputs, _ = profiled
    assert set(inputs) == {p.name for p in network_parts(model)}
    # Each part's captured input is the previous part's output: the chain is the network.
    with torch.inference_mode():
        stem = model.backbone.smb1(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(inputs["stage2"][0], stem)
    assert [a.shape for a in inputs["aam"]] == [a.shape for a in
                                                 (inputs["stage3"][0], inputs["stage4"][0], inputs["sea2"][0])]
    assert inputs["tail"][0].shape[1] == model.cfg.num_classes


def test_every_part_matches_pytorch(profiled):
    model, x, inputs, vm = profiled
    for part in network_parts(model):
        if part.module is None:
            continue
        with torch.inference_mode():
            expected = part.module(*[torch.from_numpy(a) for a in inputs[part.name]]).numpy()
        np.testing.assert_allclose(_call(vm, part.name, inputs[part.name]), expected, rtol=1e-4, atol=1e-4,
                                   err_msg=part.name)


def test_tails_give_the_label_maps(profiled):
    _, _, inputs, vm = profiled
    logits = torch.from_numpy(inputs["tail"][0])
    expected = vim_labels(logits, SIZE).numpy()
    np.testing.assert_array_equal(_call(vm, "tail", inputs["tail"]), expected)
    np.testing.assert_array_equal(_call(vm, "tail_interpolate", inputs["tail"]),
                                  interpolate_labels(logits, SIZE).numpy())
