"""Compiled artifacts against PyTorch eager: logits, label maps, frontends, runtime checks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch

from model.image import sample_image_path
from model.pp_mobileseg import build_model
from model.upsample import interpolate_labels, upsample, vim_labels
from pipeline.compile.artifact import ArtifactError, sha256_file
from pipeline.compile.build import CompileRequest, compile_artifact
from pipeline.deploy.runtime import load
from tests.conftest import run_cli

ATOL = 1e-4
TIE = 1e-5
SIZE = (512, 512)


def _build(tmp_path_factory, **kw):
    req = CompileRequest(input_size=SIZE, **kw)
    out = tmp_path_factory.mktemp("-".join(str(v) for v in kw.values()))
    compile_artifact(req, out, log=lambda _m: None)
    return out


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return {
        ("tiny", "vim", "torch"): _build(tmp_path_factory, model="tiny"),
        ("base", "vim", "torch"): _build(tmp_path_factory, model="base"),
        ("tiny", "vim", "onnx"): _build(tmp_path_factory, model="tiny", frontend="onnx"),
        ("base", "interpolate", "torch"): _build(tmp_path_factory, model="base", upsample="interpolate"),
    }


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(7)
    return rng.standard_normal((1, 3, *SIZE)).astype(np.float32)


def _margin(full: torch.Tensor) -> np.ndarray:
    top = full[0].topk(2, dim=0).values
    return (top[0] - top[1]).numpy()


def _assert_equal_but_ties(ours: np.ndarray, ref: np.ndarray, margin: np.ndarray) -> None:
    bad = (ours != ref) & (margin >= TIE)
    assert not bad.any(), f"{int(bad.sum())} pixels differ away from ties"


@pytest.mark.parametrize("key", [("tiny", "vim", "torch"), ("base", "vim", "torch"), ("tiny", "vim", "onnx"),
                                 ("base", "interpolate", "torch")])
def test_compiled_matches_pytorch(artifacts, inputs, key):
    name, mode, _ = key
    seg = load(artifacts[key])
    with torch.inference_mode():
        logits = build_model(name)(torch.from_numpy(inputs))
    np.testing.assert_allclose(seg.logits(inputs), logits.numpy(), rtol=0, atol=ATOL)
    labels = seg(inputs)
    assert labels.dtype == np.int32 and labels.shape == SIZE
    if mode == "vim":
        present = torch.unique(logits.argmax(1))
        ref = vim_labels(logits, SIZE)[0].numpy()
        margin = _margin(upsample(logits[:, present], SIZE)) if len(present) > 1 else np.full(SIZE, np.inf)
    else:
        ref = interpolate_labels(logits, SIZE)[0].numpy()
        margin = _margin(upsample(logits, SIZE))
    _assert_equal_but_ties(labels, ref, margin)


def test_frontends_and_onnxruntime_agree(artifacts, inputs):
    torch_seg, onnx_seg = load(artifacts[("tiny", "vim", "torch")]), load(artifacts[("tiny", "vim", "onnx")])
    np.testing.assert_allclose(onnx_seg.logits(inputs), torch_seg.logits(inputs), rtol=0, atol=ATOL)
    session = ort.InferenceSession(str(artifacts[("tiny", "vim", "onnx")] / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    ort_logits = session.run(None, {session.get_inputs()[0].name: inputs})[0]
    np.testing.assert_allclose(ort_logits, torch_seg.logits(inputs), rtol=0, atol=ATOL)


def test_meta_json_describes_the_build(artifacts):
    directory = artifacts[("base", "interpolate", "torch")]
    meta = json.loads((directory / "meta.json").read_text())
    assert meta["variant"] == "base" and meta["upsample"] == "interpolate" and meta["num_classes"] == 150
    assert meta["input_shape"] == [1, 3, *SIZE] and meta["tuned"] is False and meta["database"] is None
    assert meta["so_sha256"] == sha256_file(directory / "model.so")
    assert meta["target"]["kind"] == "llvm" and meta["target"]["mcpu"]
    assert meta["tvm"] == "0.27.0.post1" and meta["tvm_ffi"] == "0.1.14.post1"
    assert meta["mean"] == [0.485, 0.456, 0.406] and meta["weights_sha256"] is None


def test_unchanged_inputs_reuse_the_artifact(artifacts):
    directory = artifacts[("tiny", "vim", "torch")]
    before = (directory / "model.so").stat().st_mtime_ns
    messages = []
    _, reused = compile_artifact(CompileRequest(model="tiny", input_size=SIZE), directory, log=messages.append)
    assert reused and "reusing" in messages[0]
    assert (directory / "model.so").stat().st_mtime_ns == before


def test_segment_and_run_commands(artifacts, tmp_path, inputs):
    directory = artifacts[("tiny", "vim", "torch")]
    proc = run_cli("segment", str(sample_image_path()), "--artifact", str(directory), "-o", str(tmp_path / "s.png"),
                   "--labels", str(tmp_path / "s.npy"))
    assert (tmp_path / "s.png").is_file() and (tmp_path / "s-overlay.png").is_file()
    labels = np.load(tmp_path / "s.npy")
    assert labels.shape == (500, 741) and "%" in proc.stdout
    np.save(tmp_path / "x.npy", inputs)
    run_cli("run", "--artifact", str(directory), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "l.npy"))
    assert np.array_equal(np.load(tmp_path / "l.npy"), load(directory)(inputs))


def _copy(directory, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(directory, dst)
    return dst


def test_tampered_library_is_refused(artifacts, tmp_path):
    directory = _copy(artifacts[("tiny", "vim", "torch")], tmp_path)
    with open(directory / "model.so", "r+b") as f:
        f.seek(4096)
        f.write(b"\0\1\2\3")
    with pytest.raises(ArtifactError, match="SHA-256 does not match"):
        load(directory)
    proc = run_cli("run", "--artifact", str(directory), "--input", "x.npy", "-o", str(tmp_path / "l.npy"),
                   check=False)
    assert proc.returncode == 1 and "SHA-256 does not match" in proc.stderr and "Traceback" not in proc.stderr


def test_other_tvm_version_and_architecture_are_refused(artifacts, tmp_path):
    directory = _copy(artifacts[("tiny", "vim", "torch")], tmp_path)
    meta_path = directory / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "tvm": "0.26.0"}))
    with pytest.raises(ArtifactError, match="built with tvm 0.26.0"):
        load(directory)
    # An aarch64 library (ELF e_machine 0xB7) with a matching hash.
    with open(directory / "model.so", "r+b") as f:
        f.seek(18)
        f.write((0xB7).to_bytes(2, "little"))
    meta_path.write_text(json.dumps({**meta, "so_sha256": sha256_file(directory / "model.so")}))
    with pytest.raises(ArtifactError, match="built for aarch64"):
        load(directory)


def test_missing_files_and_wrong_inputs(artifacts, tmp_path):
    with pytest.raises(ArtifactError, match="no meta.json"):
        load(tmp_path)
    np.save(tmp_path / "small.npy", np.zeros((1, 3, 64, 64), np.float32))
    proc = run_cli("run", "--artifact", str(artifacts[("tiny", "vim", "torch")]), "--input",
                   str(tmp_path / "small.npy"), "-o", str(tmp_path / "l.npy"), check=False)
    assert proc.returncode == 1 and "expected spatial size 512x512" in proc.stderr
    assert not (tmp_path / "l.npy").exists()


def test_below_30_classes_compiles_the_plain_path(tmp_path, inputs):
    """A 19-class checkpoint (say Cityscapes): VIM is off, as in the paper."""
    model = build_model("tiny", num_classes=19)
    torch.save(model.state_dict(), tmp_path / "c19.pt")
    size = (128, 160)
    messages = []
    meta, _ = compile_artifact(CompileRequest(model="tiny", weights=tmp_path / "c19.pt", input_size=size),
                               tmp_path / "art", log=messages.append)
    assert meta["upsample"] == "interpolate" and meta["num_classes"] == 19
    assert meta["weights_sha256"] == sha256_file(tmp_path / "c19.pt")
    assert any("VIM is off below 30 classes" in m for m in messages)
    x = inputs[:, :, : size[0], : size[1]].copy()
    with torch.inference_mode():
        logits = model(torch.from_numpy(x))
    _assert_equal_but_ties(load(tmp_path / "art")(x), interpolate_labels(logits, size)[0].numpy(),
                           _margin(upsample(logits, size)))


@pytest.mark.parametrize("name", ["tiny", "base"])
def test_batchnorm_folding_keeps_the_function(name, inputs):
    from pipeline.compile.fold import batchnorm_count, fold_batchnorm

    model = build_model(name)
    folded = fold_batchnorm(model)
    assert batchnorm_count(model) > 0 and batchnorm_count(folded) == 0
    with torch.inference_mode():
        np.testing.assert_allclose(folded(torch.from_numpy(inputs)).numpy(), model(torch.from_numpy(inputs)).numpy(),
                                   rtol=0, atol=2e-5)
