"""The ppmseg command line, driven as a user would (real subprocesses)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from model.image import ade20k_classes, eval_size, palette, sample_image_path
from tests.conftest import run_cli


def test_help_lists_every_command():
    out = run_cli("--help").stdout
    for command in ("info", "predict", "convert-weights", "demo"):
        assert command in out


@pytest.mark.parametrize("name, params", [("tiny", 1_492_298), ("base", 5_943_878)])
def test_info_json(name, params):
    info = json.loads(run_cli("info", "--model", name, "--input-size", "512x512", "--json").stdout)
    assert info["params"] == params
    assert 0.5 < info["gflops"] < 10
    assert info["stages"]["decode_head"][1] == 150


def test_predict_image_png_and_npy(tmp_path):
    photo = sample_image_path()
    h, w = np.asarray(Image.open(photo)).shape[:2]
    png, npy = tmp_path / "labels.png", tmp_path / "labels.npy"
    run_cli("predict", "--input", str(photo), "--mode", "vim", "-o", str(png))
    run_cli("predict", "--input", str(photo), "--mode", "vim", "-o", str(npy))
    labels = np.load(npy)
    assert labels.shape == (h, w) and labels.dtype == np.int32
    assert np.array_equal(np.asarray(Image.open(png)), palette(150)[labels])


def test_predict_npy_logits(tmp_path):
    x = np.random.default_rng(0).normal(size=(1, 3, 96, 128)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    run_cli("predict", "--model", "base", "--input", str(tmp_path / "x.npy"), "--mode", "logits",
            "-o", str(tmp_path / "logits.npy"))
    assert np.load(tmp_path / "logits.npy").shape == (1, 150, 12, 16)


@pytest.mark.parametrize("args, message", [
    (["--input", "missing.png", "-o", "out.png"], "missing.png: no such file"),
    (["--input", "{bad_npy}", "-o", "out.npy"], "expected a float32 [1, 3, H, W] tensor"),
    (["--input", "{not_image}", "-o", "out.png"], "not a readable image"),
    (["--input", "{photo}", "--mode", "logits", "-o", "out.png"], "logits can only be saved as .npy"),
    (["--input", "{photo}", "-o", "out.txt"], "output must end in .npy or .png"),
    (["--input", "{photo}", "--input-size", "big", "-o", "out.png"], "is not HxW"),
])
def test_predict_errors_are_one_line(tmp_path, args, message):
    np.save(tmp_path / "bad.npy", np.zeros((3, 8, 8), np.float64))
    (tmp_path / "not.png").write_text("plain text")
    subst = {"bad_npy": tmp_path / "bad.npy", "not_image": tmp_path / "not.png", "photo": sample_image_path()}
    args = [a.format(**subst) for a in args]
    args = [str(tmp_path / a) if a.startswith("out.") else a for a in args]
    proc = run_cli("predict", *args, check=False)
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in proc.stderr
    assert not any(p.name.startswith(("out", ".out")) for p in tmp_path.iterdir())


def test_demo_writes_label_map_and_overlay(tmp_path):
    proc = run_cli("demo", "--model", "tiny", "-o", str(tmp_path))
    labels = np.asarray(Image.open(tmp_path / "labels.png"))
    photo = np.asarray(Image.open(sample_image_path()).convert("RGB"))
    assert labels.shape == photo.shape == np.asarray(Image.open(tmp_path / "overlay.png")).shape
    assert "random initialization" in proc.stderr
    assert any(name in proc.stdout for name in ade20k_classes())


def test_eval_size_matches_paddleseg_rule():
    # Short side to 512 (long side at most 2048), both rounded up to a multiple of 32.
    assert eval_size(500, 741) == (512, 768)
    assert eval_size(512, 512) == (512, 512)
    assert eval_size(100, 1000) == (224, 2048)
