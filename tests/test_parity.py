"""The PyTorch port against PaddleSeg 2.8 itself, with every tensor randomized."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.pp_mobileseg import build_model
from model.summary import trainable_params
from model.upsample import interpolate_labels, upsample, vim_labels
from model.weights import convert_pdparams

# Measured differences are about 6e-6 (float32 summation order).
LOGIT_ATOL = 1e-4
TIE = 1e-5  # pixels whose reference top-two logits are closer than this may differ
SIZES = ["512x512", "512x1024", "360x480"]
OFFICIAL_PARAMS = {"tiny": 1_492_298, "base": 5_943_878}


@pytest.fixture(scope="module", params=["tiny", "base"])
def converted(request, reference_dir):
    name = request.param
    model = build_model(name)
    model.load_state_dict(convert_pdparams(reference_dir / f"{name}.pdparams", name))
    return name, model


def test_parameter_counts_equal_reference(converted, manifest):
    name, model = converted
    assert trainable_params(model) == OFFICIAL_PARAMS[name] == manifest["models"][name]["trainable_params"]
    entries = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    assert len(entries) == manifest["models"][name]["state_dict_entries"]


def _assert_labels_equal(ours: np.ndarray, ref: np.ndarray, margin: np.ndarray) -> None:
    differ = ours != ref
    ties = margin < TIE
    assert not (differ & ~ties).any(), f"{int((differ & ~ties).sum())} pixels differ away from ties"


@pytest.mark.parametrize("size", SIZES)
def test_outputs_match_reference(converted, reference_dir, size):
    name, model = converted
    ref = np.load(reference_dir / f"{name}-{size}.npz")
    x = torch.from_numpy(ref["input"])
    hw = x.shape[-2:]
    with torch.inference_mode():
        low = model(x)
        full = upsample(low, hw)
        labels = interpolate_labels(low, hw)[0].numpy()
        vim = vim_labels(low, hw)[0].numpy()

    np.testing.assert_allclose(low.numpy(), ref["low_logits"], rtol=0, atol=LOGIT_ATOL)
    ref_full = np.load(reference_dir / f"{name}-{size}.full.npy", mmap_mode="r")
    np.testing.assert_allclose(full.numpy(), ref_full, rtol=0, atol=LOGIT_ATOL)
    _assert_labels_equal(labels, ref["labels"], ref["margin"])
    _assert_labels_equal(vim, ref["vim_labels"], ref["vim_margin"])
    # VIM only ever answers with classes present at low resolution.
    assert set(np.unique(vim)) <= set(ref["present"].tolist())


def test_preprocessing_matches_paddleseg(reference_dir):
    """Our image path against PaddleSeg's own eval transforms (OpenCV) on a real photo."""
    from model.image import sample_image_path
    from model.pp_mobileseg import TINY
    from pipeline.common.inputs import load_input

    ref = np.load(reference_dir / "photo.npz")["input"]
    ours = load_input(sample_image_path(), TINY.mean, TINY.std).tensor.numpy()
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
