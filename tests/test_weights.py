"""Reading and converting PaddleSeg checkpoints, and every way that can go wrong."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from model.pp_mobileseg import build_model
from model.weights import (
    WeightsError,
    convert_pdparams,
    load_model,
    paddle_to_torch_name,
    read_pdparams,
)
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def tiny_state(reference_dir) -> dict[str, np.ndarray]:
    return read_pdparams(reference_dir / "tiny.pdparams")


def _write(path: Path, state: dict) -> Path:
    path.write_bytes(pickle.dumps(state, protocol=4))
    return path


def test_renaming_rules():
    assert paddle_to_torch_name("backbone.smb1.conv.c.weight") == "backbone.smb1.conv.conv.weight"
    assert paddle_to_torch_name("decode_head.linear_fuse.bn._variance") == "decode_head.linear_fuse.bn.running_var"
    assert paddle_to_torch_name("backbone.trans1.transformer_blocks.0.attn.stride_conv.1._mean") == \
        "backbone.trans1.transformer_blocks.0.attn.stride_conv.1.running_mean"


def test_every_key_consumed_and_filled(tiny_state, reference_dir):
    state = convert_pdparams(reference_dir / "tiny.pdparams", "tiny")
    target = build_model("tiny").state_dict()
    assert set(state) == set(target)
    for key, array in tiny_state.items():
        assert torch.equal(state[paddle_to_torch_name(key)], torch.from_numpy(array))


def test_cli_round_trip(tmp_path, reference_dir):
    out = tmp_path / "tiny.pt"
    run_cli("convert-weights", str(reference_dir / "tiny.pdparams"), "-o", str(out), "--model", "tiny")
    loaded = load_model("tiny", out)
    direct = convert_pdparams(reference_dir / "tiny.pdparams", "tiny")
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, direct[key]), key


def test_other_variant_is_refused_with_hint(tmp_path, reference_dir):
    out = tmp_path / "x.pt"
    proc = run_cli("convert-weights", str(reference_dir / "tiny.pdparams"), "-o", str(out), "--model", "base",
                   check=False)
    assert proc.returncode == 1
    assert "does not fit PP-MobileSeg-base" in proc.stderr and "--model tiny" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_missing_and_extra_keys_are_named(tmp_path, tiny_state):
    state = dict(tiny_state)
    del state["backbone.smb2.blocks.0.mid_se.conv1.bias"]
    state["backbone.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(WeightsError) as e:
        convert_pdparams(_write(tmp_path / "bad.pdparams", state), "tiny")
    msg = str(e.value)
    assert "backbone.smb2.blocks.0.mid_se.conv1.bias" in msg and "backbone.extra.weight" in msg


def test_shape_mismatch_is_named(tmp_path, tiny_state):
    state = dict(tiny_state)
    state["backbone.smb1.conv.c.weight"] = np.zeros((16, 3, 5, 5), np.float32)
    with pytest.raises(WeightsError, match=r"shape mismatch: backbone\.smb1\.conv\.c\.weight"):
        convert_pdparams(_write(tmp_path / "bad.pdparams", state), "tiny")


def test_other_class_count_converts(tmp_path, tiny_state):
    state = dict(tiny_state)
    state["decode_head.conv_seg.weight"] = state["decode_head.conv_seg.weight"][:19]
    state["decode_head.conv_seg.bias"] = state["decode_head.conv_seg.bias"][:19]
    model = load_model("tiny", _write(tmp_path / "c19.pdparams", state))
    assert model.cfg.num_classes == 19
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 19, 4, 4)


@pytest.mark.parametrize("content, message", [
    (b"", "truncated"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "not a Paddle checkpoint"),
    (pickle.dumps([1, 2, 3]), "not a Paddle checkpoint"),
    (pickle.dumps({"a": "text"}), "not a Paddle checkpoint"),
])
def test_unreadable_files(tmp_path, content, message):
    path = tmp_path / "x.pdparams"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=message):
        read_pdparams(path)


def test_truncated_checkpoint(tmp_path, reference_dir):
    data = (reference_dir / "tiny.pdparams").read_bytes()
    path = tmp_path / "cut.pdparams"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated"):
        read_pdparams(path)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_code_in_a_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pdparams"
    path.write_bytes(pickle.dumps({"w": _Evil()}))
    with pytest.raises(WeightsError, match="refusing to load builtins.print"):
        read_pdparams(path)


def test_big_params_split_by_old_paddle_are_joined(tmp_path):
    whole = np.arange(12, dtype=np.float32).reshape(3, 4)
    state = {"w@@.0": whole.ravel()[:5], "w@@.1": whole.ravel()[5:],
             "UnpackBigParamInfor@@": {"w": {"OriginShape": (3, 4), "slices": ["w@@.0", "w@@.1"]}}}
    assert np.array_equal(read_pdparams(_write(tmp_path / "old.pdparams", state))["w"], whole)


def test_bad_pt_file(tmp_path):
    path = tmp_path / "x.pt"
    path.write_text("hello")
    with pytest.raises(WeightsError, match="not a PyTorch state dict"):
        load_model("tiny", path)
