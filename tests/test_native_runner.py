"""The native runner ``ppmseg-run`` (pipeline/deploy/native/runner.cc): built with g++ against the
installed wheels and run as a real process on a real compiled Tiny artifact. Its outputs
must equal the Python runtime's exactly."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.image import normalize_image, palette, sample_image_path
from pipeline.compile.artifact import sha256_file
from pipeline.deploy.native import CXXFLAGS, build_runner
from pipeline.deploy.runtime import load

INPUT_SIZE = (512, 512)


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> Path:
    return build_runner(tmp_path_factory.mktemp("native") / "ppmseg-run")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    from pipeline.compile.build import CompileRequest, compile_artifact

    out = tmp_path_factory.mktemp("tiny")
    compile_artifact(CompileRequest(model="tiny", input_size=INPUT_SIZE), out, log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def segmenter(artifact):
    return load(artifact)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(Image.open(sample_image_path()).convert("RGB"))


def run(runner: Path, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}  # the rpath must suffice
    return subprocess.run([str(runner), *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**environ, **(env or {})})


def ok(runner: Path, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = run(runner, *args, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc


def write_ppm(path: Path, rgb: np.ndarray) -> Path:
    Image.fromarray(rgb).save(path)  # Pillow writes binary P6 for .ppm
    assert path.read_bytes()[:2] == b"P6"
    return path


def read_pnm(path: Path) -> tuple[bytes, int, np.ndarray]:
    """A P5/P6 file as (magic, maxval, array), parsed strictly (the header the runner writes)."""
    data = path.read_bytes()
    magic, dims, maxval, rest = data.split(b"\n", 3)
    w, h = map(int, dims.split())
    channels = 3 if magic == b"P6" else 1
    dtype = np.dtype(">u2") if int(maxval) > 255 else np.dtype("u1")
    assert len(rest) == w * h * channels * dtype.itemsize
    arr = np.frombuffer(rest, dtype).reshape((h, w, channels) if channels == 3 else (h, w))
    return magic, int(maxval), arr


def test_build_flags():
    assert "-ffp-contract=off" in CXXFLAGS  # the resize is compared bit for bit


@pytest.mark.parametrize("size", [None, (1024, 1024), INPUT_SIZE], ids=["photo-500x741", "1024x1024", "512x512"])
def test_image_labels_equal_python_runtime(runner, artifact, segmenter, photo, tmp_path, size):
    rgb = photo if size is None else np.asarray(Image.fromarray(photo).resize(size[::-1], Image.BILINEAR))
    ppm = write_ppm(tmp_path / "in.ppm", rgb)
    pgm, color, x_bin = tmp_path / "labels.pgm", tmp_path / "color.ppm", tmp_path / "x.bin"
    ok(runner, artifact, "--input", ppm, "-o", pgm, "--color", color, "--dump-input", x_bin)

    x = normalize_image(rgb, segmenter.input_size, segmenter.mean, segmenter.std).numpy()
    expected = segmenter(rgb)
    assert np.array_equal(np.fromfile(x_bin, np.float32).reshape(x.shape), x)  # bit-exact preprocessing

    magic, maxval, labels = read_pnm(pgm)
    assert (magic, maxval) == (b"P5", 255) and labels.shape == rgb.shape[:2]
    assert np.array_equal(labels.astype(np.int32), expected)
    magic, _, colored = read_pnm(color)
    assert magic == b"P6" and np.array_equal(colored, palette(segmenter.num_classes)[expected])


@pytest.mark.parametrize("hw", [(384, 640), (300, 200), (7, 1100)])
def test_preprocessing_bit_exact_at_other_model_sizes(runner, artifact, photo, tmp_path, hw):
    """Non-power-of-two model sizes, where the source coordinates are inexact in float32
    (only --dump-input: no model run)."""
    fake = tmp_path / "artifact"
    fake.mkdir()
    shutil.copy(artifact / "model.so", fake / "model.so")
    meta = json.loads((artifact / "meta.json").read_text())
    meta["input_shape"] = [1, 3, *hw]
    (fake / "meta.json").write_text(json.dumps(meta))
    for i, rgb in enumerate([photo, photo[:1, :1], photo[:5, 3:], photo[::3, ::2]]):
        x_bin = tmp_path / f"x{i}.bin"
        ok(runner, fake, "--input", write_ppm(tmp_path / f"in{i}.ppm", np.ascontiguousarray(rgb)),
           "--dump-input", x_bin)
        x = normalize_image(np.ascontiguousarray(rgb), hw, meta["mean"], meta["std"]).numpy()
        assert np.array_equal(np.fromfile(x_bin, np.float32).reshape(x.shape), x), rgb.shape


def test_raw_tensor_equals_python_runtime(runner, artifact, segmenter, tmp_path):
    x = np.random.default_rng(0).normal(size=(1, 3, *INPUT_SIZE)).astype(np.float32)
    x.tofile(tmp_path / "x.bin")
    ok(runner, artifact, "--raw", tmp_path / "x.bin", "-o", tmp_path / "labels.pgm")
    _, _, labels = read_pnm(tmp_path / "labels.pgm")
    assert labels.shape == INPUT_SIZE
    assert np.array_equal(labels.astype(np.int32), segmenter(x))


def test_sixteen_bit_label_map_above_256_classes(runner, artifact, segmenter, tmp_path):
    fake = tmp_path / "artifact"
    shutil.copytree(artifact, fake)
    meta = json.loads((fake / "meta.json").read_text())
    meta["num_classes"] = 300
    (fake / "meta.json").write_text(json.dumps(meta))
    x = np.random.default_rng(1).normal(size=(1, 3, *INPUT_SIZE)).astype(np.float32)
    x.tofile(tmp_path / "x.bin")
    ok(runner, fake, "--raw", tmp_path / "x.bin", "-o", tmp_path / "labels.pgm")
    magic, maxval, labels = read_pnm(tmp_path / "labels.pgm")
    assert (magic, maxval, labels.dtype) == (b"P5", 65535, np.dtype(">u2"))
    assert np.array_equal(labels.astype(np.int32), segmenter(x))


def test_bench_prints_median_p90_and_threads(runner, artifact, tmp_path):
    np.zeros((1, 3, *INPUT_SIZE), np.float32).tofile(tmp_path / "x.bin")
    out = ok(runner, artifact, "--raw", tmp_path / "x.bin", "--bench", "3", "--warmup", "1",
             env={"TVM_NUM_THREADS": "1"}).stdout
    m = re.search(r"median ([\d.]+) ms, p90 ([\d.]+) ms over 3 runs .*threads (\d+)", out)
    assert m, out
    assert 0 < float(m[1]) <= float(m[2]) and m[3] == "1"


def _tamper_hash(d: Path) -> None:
    with open(d / "model.so", "ab") as f:
        f.write(b"\0")


def _meta_arch(d: Path) -> None:
    meta = json.loads((d / "meta.json").read_text())
    meta["arch"] = "aarch64"
    (d / "meta.json").write_text(json.dumps(meta))


def _foreign_library(d: Path) -> None:
    """A library for another machine (ELF e_machine = AArch64), consistently described."""
    lib = bytearray((d / "model.so").read_bytes())
    lib[18:20] = (0xB7 if os.uname().machine != "aarch64" else 0x3E).to_bytes(2, "little")
    (d / "model.so").write_bytes(lib)
    meta = json.loads((d / "meta.json").read_text())
    meta["so_sha256"] = sha256_file(d / "model.so")
    meta["arch"] = "aarch64" if os.uname().machine != "aarch64" else "x86_64"
    (d / "meta.json").write_text(json.dumps(meta))


def _truncated_library(d: Path) -> None:
    """A truncated library whose hash was recorded anyway (dlopen would die of SIGBUS)."""
    (d / "model.so").write_bytes((d / "model.so").read_bytes()[:300_000])
    meta = json.loads((d / "meta.json").read_text())
    meta["so_sha256"] = sha256_file(d / "model.so")
    (d / "meta.json").write_text(json.dumps(meta))


def _wrong_shape_in_meta(d: Path) -> None:
    meta = json.loads((d / "meta.json").read_text())
    meta["input_shape"] = [1, 3, 256, 256]
    (d / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("args, message, prepare", [
    (["{art}", "--input", "{tmp}/missing.ppm", "-o", "{tmp}/o.pgm"], "missing.ppm: no such file", None),
    (["{art}", "--input", "{tmp}/truncated.ppm", "-o", "{tmp}/o.pgm"], "truncated PPM", None),
    (["{art}", "--input", "{tmp}/ascii.ppm", "-o", "{tmp}/o.pgm"], "ASCII PNM (P3) is not supported", None),
    (["{art}", "--input", "{tmp}/garbage.ppm", "-o", "{tmp}/o.pgm"], "not a binary PPM", None),
    (["{art}", "--input", "{tmp}/badheader.ppm", "-o", "{tmp}/o.pgm"], "malformed PPM header", None),
    (["{art}", "--input", "{tmp}/deep.ppm", "-o", "{tmp}/o.pgm"], "maxval 65535 is not supported", None),
    (["{art}", "--raw", "{tmp}/small.bin", "-o", "{tmp}/o.pgm"], "bytes, expected 3145728", None),
    (["{art}", "--raw", "{tmp}/nan.bin", "-o", "{tmp}/o.pgm"], "NaN or infinite", None),
    (["{art}", "--raw", "{tmp}/x.bin", "-o", "{tmp}/o.pgm"], "SHA-256 does not match", _tamper_hash),
    (["{art}", "--raw", "{tmp}/x.bin", "-o", "{tmp}/o.pgm"], "meta.json says arch aarch64", _meta_arch),
    (["{art}", "--raw", "{tmp}/x.bin", "-o", "{tmp}/o.pgm"], "this machine is", _foreign_library),
    (["{art}", "--raw", "{tmp}/x.bin", "-o", "{tmp}/o.pgm"], "truncated or corrupt ELF", _truncated_library),
    (["{art}", "--input", "{tmp}/ok.ppm", "-o", "{tmp}/o.pgm"], "shape[2] mismatch", _wrong_shape_in_meta),
    (["{tmp}", "--raw", "{tmp}/x.bin", "-o", "{tmp}/o.pgm"], "no meta.json", None),
    (["{art}", "--raw", "{tmp}/x.bin"], "nothing to do", None),
    (["{art}", "--raw", "{tmp}/x.bin", "--input", "{tmp}/ok.ppm", "-o", "{tmp}/o.pgm"], "exactly one of", None),
    (["{art}", "--raw", "{tmp}/x.bin", "--bench", "zero"], "--bench: expected an integer", None),
    ([], "missing ARTIFACT_DIR", None),
], ids=["missing", "truncated", "p3", "garbage", "bad-header", "16-bit", "raw-size", "raw-nan", "hash",
        "meta-arch", "foreign-arch", "truncated-so", "meta-shape", "no-artifact", "no-output", "two-inputs",
        "bad-count", "no-args"])
def test_errors_are_one_line(runner, artifact, tmp_path, args, message, prepare):
    (tmp_path / "truncated.ppm").write_bytes(b"P6\n64 48\n255\n" + bytes(1000))
    (tmp_path / "ascii.ppm").write_text("P3\n2 1\n255\n0 0 0 255 255 255\n")
    (tmp_path / "garbage.ppm").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    (tmp_path / "badheader.ppm").write_bytes(b"P6\n64 x48\n255\n" + bytes(64 * 48 * 3))
    (tmp_path / "deep.ppm").write_bytes(b"P6\n2 2\n65535\n" + bytes(24))
    write_ppm(tmp_path / "ok.ppm", np.zeros((20, 30, 3), np.uint8))
    np.zeros(1000, np.float32).tofile(tmp_path / "small.bin")
    x = np.zeros((1, 3, *INPUT_SIZE), np.float32)
    x.tofile(tmp_path / "x.bin")
    x[0, 1, 2, 3] = np.nan
    x.tofile(tmp_path / "nan.bin")
    art = artifact
    if prepare is not None:
        art = tmp_path / "artifact"
        shutil.copytree(artifact, art)
        prepare(art)
    proc = run(runner, *(a.format(art=art, tmp=tmp_path) for a in args))
    assert proc.returncode in (1, 2), (proc.returncode, proc.stderr)  # not a signal
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert lines[0].startswith("ppmseg-run: error: ")
    assert not (tmp_path / "o.pgm").exists()
