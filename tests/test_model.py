"""The PyTorch model on its own: variants, sizes, output modes."""

from __future__ import annotations

import pytest
import torch

from model.pp_mobileseg import build_model, get_config
from model.upsample import VIM_MIN_CLASSES, interpolate_labels, segment_logits, vim_labels


@pytest.mark.parametrize("name, stride", [("tiny", 16), ("base", 8)])
@pytest.mark.parametrize("hw", [(512, 512), (512, 1024), (360, 480), (97, 131)])
def test_shapes_for_any_input_size(name, stride, hw):
    model = build_model(name)
    with torch.inference_mode():
        low = model(torch.randn(1, 3, *hw))
    # Stride-2 convs round up (ceil(H / 8)); Tiny's AAM then halves by a scale factor (floor).
    h8, w8 = (-(-s // 8) for s in hw)
    expect = (h8, w8) if stride == 8 else (h8 // 2, w8 // 2)
    assert tuple(low.shape) == (1, 150, *expect)
    for mode in ("interpolate", "vim"):
        labels = segment_logits(low, hw, mode)
        assert labels.shape == (1, *hw) and labels.dtype == torch.int32


def test_vim_equals_interpolate_when_all_classes_survive():
    # With every class present at low resolution, VIM is exactly the plain path.
    logits = torch.randn(1, 40, 8, 10)
    logits[0, :, 0, 0] = -10
    for c in range(40):
        logits[0, c, c // 10, c % 10] = 10
    assert torch.equal(vim_labels(logits, (33, 47)), interpolate_labels(logits, (33, 47)))


def test_vim_only_answers_present_classes():
    logits = torch.randn(2, 150, 16, 16)
    present = set(torch.unique(logits.argmax(1)).tolist())
    assert set(torch.unique(vim_labels(logits, (128, 128))).tolist()) <= present


def test_vim_falls_back_below_30_classes():
    logits = torch.randn(1, VIM_MIN_CLASSES - 1, 8, 8)
    assert torch.equal(segment_logits(logits, (64, 64), "vim"), interpolate_labels(logits, (64, 64)))
    model = build_model("tiny", num_classes=19, output="vim")
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 128, 128)).shape == (1, 128, 128)


def test_config_errors():
    with pytest.raises(ValueError, match="unknown model 'huge'"):
        get_config("huge")
    with pytest.raises(ValueError, match="num_classes must be positive"):
        get_config("tiny", 0)


def test_fixed_random_init_is_deterministic():
    a, b = build_model("tiny").state_dict(), build_model("tiny").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
