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
    meta["entries"] = [{**meta["entries"][0], "input_shape": [1, 3, *hw]}]
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
    meta["input_shape"] = meta["entries"][0]["input_shape"] = [1, 3, 256, 256]
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


# --- many images in one process (several --input, or a directory) ---

def test_folder_labels_equal_python_runtime(runner, artifact, segmenter, photo, tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    images = {"b": photo, "a": photo[100:400, 50:600],
              "c": np.asarray(Image.fromarray(photo).resize((320, 256), Image.BILINEAR))}
    for stem, rgb in images.items():
        write_ppm(folder / f"{stem}.ppm", np.ascontiguousarray(rgb))
    (folder / "a-bad.ppm").write_bytes(b"P6\n64 48\n255\n" + bytes(1000))  # truncated: reported, skipped
    (folder / "notes.txt").write_text("not a .ppm: left alone\n")
    write_ppm(folder / "sub" / "d.ppm", photo[:50, :50])  # not recursive
    images["e"] = np.ascontiguousarray(photo[::2, ::3])
    extra = write_ppm(tmp_path / "e.PPM", images["e"])
    out = tmp_path / "out"

    proc = run(runner, artifact, "--input", folder, "--input", extra, "-o", out / "labels", "--color", out / "color",
               env={"TVM_NUM_THREADS": "1"})

    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [f"ppmseg-run: error: {folder / 'a-bad.ppm'}: truncated PPM (1000 of 9216 "
                                        "pixel bytes)", "ppmseg-run: error: 1 of 5 images failed (listed above)"]
    assert re.search(r"^segmented 4 of 5 images in [\d.]+ s: [\d.]+ images/s .*threads 1", proc.stdout), proc.stdout
    for stem, rgb in images.items():
        expected = segmenter(rgb)
        magic, _, labels = read_pnm(out / "labels" / f"{stem}.pgm")
        assert magic == b"P5" and np.array_equal(labels.astype(np.int32), expected), stem
        magic, _, colored = read_pnm(out / "color" / f"{stem}-color.ppm")
        assert magic == b"P6" and np.array_equal(colored, palette(segmenter.num_classes)[expected]), stem
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["a.pgm", "b.pgm", "c.pgm", "e.pgm"]
    assert sorted(p.name for p in (out / "color").iterdir()) == [f"{s}-color.ppm" for s in "abce"]

    # Several files by name, all good: exit 0, the same label maps.
    ok(runner, artifact, "--input", folder / "c.ppm", "--input", extra, "-o", tmp_path / "again")
    for stem in "ce":
        assert (tmp_path / "again" / f"{stem}.pgm").read_bytes() == (out / "labels" / f"{stem}.pgm").read_bytes()


@pytest.mark.parametrize("args, code, message", [
    (["--input", "{t}/p/a.ppm", "--input", "{t}/q/a.ppm", "-o", "{t}/o"], 1,
     "{t}/p/a.ppm and {t}/q/a.ppm would both write {t}/o/a.pgm"),
    (["--input", "{t}/q", "--input", "{t}/q/a.ppm", "-o", "{t}/o"], 1, "{t}/q/a.ppm is given twice"),
    (["--input", "{t}/p", "--color", "{t}/p"], 1, "{t}/p/a-color.ppm would overwrite the input {t}/p/a-color.ppm"),
    (["--input", "{t}/empty", "-o", "{t}/o"], 1, "{t}/empty: no .ppm files in this directory"),
    (["--input", "{t}/p", "--input", "{t}/missing.ppm", "-o", "{t}/o"], 1,
     "{t}/missing.ppm: no such file or directory"),
    (["--input", "{t}/p", "-o", "{t}/a-file"], 1, "{t}/a-file: exists and is not a directory"),
    (["--input", "{t}/p", "-o", "{t}/o.pgm"], 2, "several images are written into a directory; give -o OUT_DIR"),
    (["--input", "{t}/p", "-o", "{t}/o", "--bench", "2"], 2, "take one --input file, not several images"),
    (["--input", "{t}/p"], 2, "nothing to do: give -o OUT_DIR and/or --color OUT_DIR"),
], ids=["same-stem", "twice", "overwrite-input", "empty-dir", "missing", "out-is-a-file", "out-pgm", "bench",
        "no-output"])
def test_folder_refusals_before_any_work(runner, artifact, tmp_path, args, code, message):
    for sub in ("p", "q", "empty"):
        (tmp_path / sub).mkdir()
    for name in ("p/a.ppm", "p/a-color.ppm", "q/a.ppm"):
        write_ppm(tmp_path / name, np.zeros((20, 30, 3), np.uint8))
    (tmp_path / "a-file").write_text("")
    before = sorted(tmp_path.rglob("*"))
    proc = run(runner, artifact, *(a.format(t=tmp_path) for a in args))
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ppmseg-run: error: ") and message.format(t=tmp_path) in lines[0]
    assert sorted(tmp_path.rglob("*")) == before  # no output directory, no file
