"""Both TVM frontends (torch.export and ONNX) against PyTorch eager and ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from model.pp_mobileseg import build_model
from pipeline.compile import frontend as fe
from rpc.devices import load_profile

ATOL = 1e-4
# 120x168 makes the 1/8 map 15x21, so the AAM's scale_factor=0.5 resize has odd
# extents: the case where TVM's importers need the crop in pipeline/frontend.py.
SHAPE = (1, 3, 120, 168)


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> dict[str, np.ndarray]:
    model = build_model("tiny")
    rng = np.random.default_rng(0)
    x, other = (rng.standard_normal(SHAPE).astype(np.float32) for _ in range(2))
    with torch.inference_mode():
        eager, eager_other = (model(torch.from_numpy(a)).numpy() for a in (x, other))

    target = load_profile("host").tvm_target()
    mod = fe.from_torch(model, SHAPE)
    assert len(mod["main"].params) == 1, "weights must be bound as constants, not inputs"
    tvm_torch = fe.run(fe.build(mod, target), x)

    path = fe.export_onnx(model, SHAPE, tmp_path_factory.mktemp("onnx") / "tiny.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnxruntime = session.run(None, {session.get_inputs()[0].name: x})[0]
    tvm_onnx = fe.run(fe.build(fe.from_onnx(path, SHAPE), target), x)
    return {"eager": eager, "eager_other": eager_other, "tvm_torch": tvm_torch,
            "onnxruntime": onnxruntime, "tvm_onnx": tvm_onnx}


def test_logits_depend_on_input(case):
    assert case["eager"].shape == (1, 150, 7, 10)
    assert np.abs(case["eager"] - case["eager_other"]).max() > 10 * ATOL


@pytest.mark.parametrize("result", ["tvm_torch", "tvm_onnx", "onnxruntime"])
def test_matches_pytorch(case, result):
    np.testing.assert_allclose(case[result], case["eager"], rtol=0, atol=ATOL)


def test_frontends_agree(case):
    np.testing.assert_allclose(case["tvm_onnx"], case["tvm_torch"], rtol=0, atol=ATOL)


class Downscale(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)


def test_scale_factor_resize_of_odd_extent(tmp_path):
    """PyTorch samples with step 1/scale = 2, not 45/22; both frontends must too."""
    x = np.random.default_rng(1).standard_normal((1, 2, 45, 61)).astype(np.float32)
    eager = Downscale()(torch.from_numpy(x)).numpy()
    target = load_profile("host").tvm_target()
    path = fe.export_onnx(Downscale(), x.shape, tmp_path / "down.onnx")
    for mod in (fe.from_torch(Downscale(), x.shape), fe.from_onnx(path, x.shape)):
        np.testing.assert_allclose(fe.run(fe.build(mod, target), x), eager, rtol=0, atol=1e-6)
