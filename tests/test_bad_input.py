"""Bad input through the real ``ppmseg`` CLI and the Python runtime: images, tensors,
artifacts and weights. Every case must end with exit code 1, exactly one line on stderr
naming the problem, no traceback, and no output written (an existing output unchanged).
The cases that tests/test_cli.py, test_compile.py and test_weights.py already drive are
not repeated here."""

from __future__ import annotations

import json
import pickle
import platform
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.image import ImageError, read_image
from model.pp_mobileseg import build_model
from pipeline.cli import error_line
from pipeline.compile.artifact import sha256_file
from tests.conftest import private_rpc_state, run_cli

SIZE = (64, 64)
HERE = platform.machine()
OTHER, OTHER_MACHINE = ("x86_64", 0x3E) if HERE == "aarch64" else ("aarch64", 0xB7)  # ELF e_machine


def small_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny at 64x64 in the session's base directory: compiled by the first module that asks,
    used as it is by the next one (the tests only break copies of it)."""
    from pipeline.compile.build import CompileRequest, compile_artifact

    out = tmp_path_factory.getbasetemp() / "tiny-host-64x64"
    if not (out / "meta.json").is_file():  # written last, so present means complete
        compile_artifact(CompileRequest(model="tiny", input_size=SIZE), out, log=lambda _m: None)
    return out


def assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    """Exit code 1, one line on stderr (``Error: ...``) containing ``words``, no traceback."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` with no pixel data: a decompression
    bomb is refused from its header, so nothing more is needed."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.fixture(scope="module", autouse=True)
def rpc_state(tmp_path_factory):
    """`bench` starts local servers when an artifact passes its checks: keep any of that private."""
    with private_rpc_state(tmp_path_factory.mktemp("rpc")) as directory:
        yield directory


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    return small_artifact(tmp_path_factory)


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def files(tmp_path_factory, rgb) -> Path:
    """Every bad (and every converted) input, written once."""
    d = tmp_path_factory.mktemp("inputs")
    Image.fromarray(rgb).save(d / "ok.png")
    Image.fromarray(rgb).save(d / "ok.jpg", quality=90)
    for name in ("ok.png", "ok.jpg"):
        data = (d / name).read_bytes()
        (d / f"truncated{Path(name).suffix}").write_bytes(data[: len(data) // 2])
    (d / "text.png").write_text("not an image\n")
    (d / "bomb.png").write_bytes(png_header(20_000, 20_000))  # past Pillow's own hard limit
    (d / "big.png").write_bytes(png_header(10_000, 9_000))  # past ours, where Pillow only warns
    Image.new("RGB", (5000, 1)).save(d / "strip.png")  # 1 row: the eval resize gives 0 rows
    Image.fromarray(np.zeros((8, 8), np.float32)).save(d / "float.tif")
    Image.fromarray(rgb[..., 0]).save(d / "grey.png")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])).save(d / "rgba.png")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 256 + 3).save(d / "grey16.png")  # high byte: the 8-bit grey

    x = np.random.default_rng(1).standard_normal((1, 3, *SIZE)).astype(np.float32)
    np.save(d / "x.npy", x)
    np.save(d / "nan.npy", np.full_like(x, np.nan))
    np.save(d / "inf.npy", np.where(x > 2, np.inf, x).astype(np.float32))
    np.save(d / "f64.npy", x.astype(np.float64))
    np.save(d / "u8.npy", np.zeros((1, 3, *SIZE), np.uint8))
    np.save(d / "nhwc.npy", np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    np.save(d / "small.npy", x[:, :, :16, :16].copy())
    (d / "truncated.npy").write_bytes((d / "x.npy").read_bytes()[:4000])
    (d / "text.npy").write_text("1 2 3\n")

    tiny = build_model("tiny").state_dict()
    torch.save(build_model("base").state_dict(), d / "base.pt")
    torch.save(tiny, d / "tiny.pt")
    (d / "truncated.pt").write_bytes((d / "tiny.pt").read_bytes()[:200_000])
    (d / "text.pt").write_text("not a checkpoint\n")
    torch.save({"epoch": 3}, d / "dict.pt")
    pdparams = pickle.dumps({k: v.numpy() for k, v in tiny.items()}, protocol=4)
    (d / "truncated.pdparams").write_bytes(pdparams[: len(pdparams) // 3])
    (d / "png.pdparams").write_bytes((d / "ok.png").read_bytes())
    return d


def _rehash(d: Path, **meta_changes) -> None:
    meta = json.loads((d / "meta.json").read_text())
    meta.update(so_sha256=sha256_file(d / "model.so"), **meta_changes)
    (d / "meta.json").write_text(json.dumps(meta))


def _edit_meta(d: Path, drop: str | None = None, **changes) -> None:
    meta = json.loads((d / "meta.json").read_text())
    meta.update(changes)
    meta.pop(drop, None)
    (d / "meta.json").write_text(json.dumps(meta))


def _tamper(d: Path) -> None:
    with open(d / "model.so", "ab") as f:
        f.write(b"\0")


def _foreign(d: Path) -> None:
    """A library for another architecture (ELF e_machine), consistently described."""
    lib = bytearray((d / "model.so").read_bytes())
    lib[18:20] = OTHER_MACHINE.to_bytes(2, "little")
    (d / "model.so").write_bytes(lib)
    _rehash(d, arch=OTHER)


def _truncated(d: Path) -> None:
    """Cut short with its hash recorded anyway: dlopen would map past the end (SIGBUS)."""
    (d / "model.so").write_bytes((d / "model.so").read_bytes()[:300_000])
    _rehash(d)


def _not_tvm(d: Path) -> None:
    """A real x86_64 shared library that is not a TVM module (NumPy's core extension)."""
    shutil.copy(np._core._multiarray_umath.__file__, d / "model.so")
    _rehash(d)


BROKEN = {
    "tampered": _tamper,
    "foreign": _foreign,
    "other-tvm": lambda d: _edit_meta(d, tvm="0.26.0"),
    "truncated-so": _truncated,
    "not-tvm": _not_tvm,
    "no-so": lambda d: (d / "model.so").unlink(),
    "bad-json": lambda d: (d / "meta.json").write_text("{not json"),
    "incomplete": lambda d: _edit_meta(d, drop="input_shape"),
}


# Each case: command line ({f} input files, {art} the artifact or its broken copy, {out} the output),
# how the artifact is broken (or None), the words the error must contain, and whether the output
# already exists (it must then be left unchanged) or not (it must not appear).
CASES = {
    # images
    "truncated-png": (["predict", "--input", "{f}/truncated.png", "-o", "{out}.npy"], None,
                      ["truncated.png", "truncated"], False),
    "truncated-jpeg": (["segment", "{f}/truncated.jpg", "--artifact", "{art}", "-o", "{out}.png"], None,
                       ["truncated.jpg", "truncated"], True),
    "not-an-image-run": (["run", "--artifact", "{art}", "--input", "{f}/text.png", "-o", "{out}.npy"], None,
                         ["text.png: not a readable image"], False),
    "bomb": (["predict", "--input", "{f}/bomb.png", "-o", "{out}.png"], None,
             ["bomb.png: more than 89,478,485 pixels"], True),
    "big": (["segment", "{f}/big.png", "--artifact", "{art}", "-o", "{out}.png"], None,
            ["big.png: 10000x9000 is more than 89,478,485 pixels"], False),
    "strip": (["predict", "--input", "{f}/strip.png", "-o", "{out}.npy"], None,
              ["strip.png: a 1x5000 image is too elongated", "--input-size"], False),
    "float-tiff": (["predict", "--input", "{f}/float.tif", "-o", "{out}.npy"], None,
                   ["float.tif: 32-bit float samples are not supported"], False),
    # float tensors
    "nan": (["predict", "--input", "{f}/nan.npy", "-o", "{out}.npy"], None, ["nan.npy", "NaN or infinite"], True),
    "float64": (["run", "--artifact", "{art}", "--input", "{f}/f64.npy", "-o", "{out}.npy"], None,
                ["f64.npy: expected a float32 [1, 3, H, W] tensor, got float64"], False),
    "nhwc": (["predict", "--input", "{f}/nhwc.npy", "-o", "{out}.npy"], None,
             ["got float32 [1, 64, 64, 3]", "NHWC?"], True),
    "truncated-npy": (["predict", "--input", "{f}/truncated.npy", "-o", "{out}.npy"], None,
                      ["truncated.npy: truncated"], False),
    "not-npy": (["run", "--artifact", "{art}", "--input", "{f}/text.npy", "-o", "{out}.npy"], None,
                ["text.npy: not a .npy file"], False),
    "small-tensor": (["predict", "--input", "{f}/small.npy", "-o", "{out}.npy"], None,
                     ["small.npy: spatial size 16x16 is outside 32 to 8192"], False),
    # artifacts
    "tampered-bench": (["bench", "--artifact", "{art}", "--input", "{f}/x.npy"], "tampered",
                       ["SHA-256 does not match meta.json"], False),
    "foreign-run": (["run", "--artifact", "{art}", "--input", "{f}/x.npy", "-o", "{out}.npy"], "foreign",
                    [f"built for {OTHER}, this machine is {HERE}", "--device"], False),
    "foreign-bench": (["bench", "--artifact", "{art}", "--input", "{f}/x.npy"], "foreign",
                      [f"built for {OTHER}, the device is {HERE}"], False),
    "other-tvm-run": (["run", "--artifact", "{art}", "--input", "{f}/x.npy", "-o", "{out}.npy"], "other-tvm",
                      ["built with tvm 0.26.0, this runtime has 0.27"], True),
    "other-tvm-package": (["package", "--artifact", "{art}", "-o", "{out}.tar.gz"], "other-tvm",
                          ["the artifact was built with 0.26.0"], False),
    "truncated-so-segment": (["segment", "{f}/ok.png", "--artifact", "{art}", "-o", "{out}.png"], "truncated-so",
                             ["model.so: truncated or corrupt ELF library"], True),
    "truncated-so-package": (["package", "--artifact", "{art}", "-o", "{out}.tar.gz"], "truncated-so",
                             ["model.so: truncated or corrupt ELF library"], True),
    "not-tvm": (["run", "--artifact", "{art}", "--input", "{f}/x.npy", "-o", "{out}.npy"], "not-tvm",
                ["model.so: not a loadable ppmseg library"], False),
    "no-so": (["segment", "{f}/ok.png", "--artifact", "{art}", "-o", "{out}.png"], "no-so",
              ["model.so is missing"], False),
    "bad-json": (["run", "--artifact", "{art}", "--input", "{f}/x.npy", "-o", "{out}.npy"], "bad-json",
                 ["meta.json: not valid JSON"], False),
    "incomplete-meta": (["segment", "{f}/ok.png", "--artifact", "{art}", "-o", "{out}.png"], "incomplete",
                        ["meta.json: incomplete, no input_shape"], False),
    "no-artifact": (["run", "--artifact", "{f}/nowhere", "--input", "{f}/x.npy", "-o", "{out}.npy"], None,
                    ["nowhere: no such artifact directory"], False),
    # weights
    "other-variant-pt": (["predict", "--model", "tiny", "--weights", "{f}/base.pt", "--input", "{f}/x.npy",
                          "-o", "{out}.npy"], None,
                         ["base.pt: checkpoint does not fit PP-MobileSeg-tiny", "(it fits --model base)"], True),
    "truncated-pt": (["predict", "--weights", "{f}/truncated.pt", "--input", "{f}/x.npy", "-o", "{out}.npy"], None,
                     ["truncated.pt: not a PyTorch state dict (unreadable: truncated"], False),
    "text-pt": (["compile", "--weights", "{f}/text.pt", "--input-size", "64x64", "-o", "{out}"], None,
                ["text.pt: not a PyTorch state dict (unreadable"], False),
    "dict-pt": (["predict", "--weights", "{f}/dict.pt", "--input", "{f}/x.npy", "-o", "{out}.npy"], None,
                ["dict.pt: not a PyTorch state dict"], False),
    "truncated-pdparams": (["predict", "--weights", "{f}/truncated.pdparams", "--input", "{f}/x.npy",
                            "-o", "{out}.npy"], None, ["truncated.pdparams: truncated"], True),
    "png-pdparams": (["convert-weights", "{f}/png.pdparams", "-o", "{out}.pt"], None,
                     ["png.pdparams: not a Paddle checkpoint"], False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cli_refuses_bad_input(case, files, artifact, tmp_path):
    args, broken, words, existing = CASES[case]
    art = artifact
    if broken is not None:
        art = tmp_path / "artifact"
        shutil.copytree(artifact, art)
        BROKEN[broken](art)
    outdir = tmp_path / "out"
    outdir.mkdir()
    out = str(outdir / "result")
    args = [a.format(f=files, art=art, out=out) for a in args]
    target = next((Path(a) for a in args if a.startswith(out)), None)
    if existing and target is not None:
        target.write_bytes(b"the previous output")
    before = {p.name: p.read_bytes() for p in outdir.iterdir()}
    assert_one_line_error(run_cli(*args, check=False), *words)
    assert {p.name: p.read_bytes() for p in outdir.iterdir()} == before  # nothing new, nothing changed


# --- what is converted rather than refused ---

def test_grey_rgba_and_16_bit_images_are_converted(files, rgb):
    grey = rgb[..., 0]
    assert np.array_equal(read_image(files / "grey.png"), np.repeat(grey[..., None], 3, axis=2))
    assert np.array_equal(read_image(files / "rgba.png"), rgb)  # alpha dropped, as OpenCV's colour read does
    # 16-bit grey keeps its high byte (OpenCV); Pillow's own convert would clip every pixel to 255.
    assert np.array_equal(read_image(files / "grey16.png"), np.repeat(grey[..., None], 3, axis=2))


def test_grey_image_through_the_cli_and_a_strip_at_a_given_size(files, artifact, rgb, tmp_path):
    from pipeline.deploy.runtime import load

    seg = load(artifact)
    run_cli("run", "--artifact", str(artifact), "--input", str(files / "grey.png"), "-o", str(tmp_path / "g.npy"))
    assert np.array_equal(np.load(tmp_path / "g.npy"), seg(np.repeat(rgb[..., :1], 3, axis=2)))
    # A strip the eval resize cannot shrink is fine at an explicit model size (what the error suggests).
    from pipeline.common.inputs import load_input

    strip = load_input(files / "strip.png", (0.5,) * 3, (0.25,) * 3, (32, 256))
    assert strip.tensor.shape == (1, 3, 32, 256) and strip.original_size == (1, 5000)


# --- the Python runtime ---

@pytest.fixture(scope="module")
def segmenter(artifact):
    from pipeline.deploy.runtime import load

    return load(artifact)


@pytest.mark.parametrize("value, message", [
    (np.zeros((1, 3, *SIZE), np.float64), "or a normalized float32 [1, 3, 64, 64] tensor, got float64"),
    (np.full((1, 3, *SIZE), np.nan, np.float32), "NaN or infinite"),
    (np.full((1, 3, *SIZE), -np.inf, np.float32), "NaN or infinite"),
    (np.zeros((1, 3, 32, 32), np.float32), "expected float32 [1, 3, 64, 64], got float32 [1, 3, 32, 32]"),
    (np.zeros((1, *SIZE, 3), np.float32), "got float32 [1, 64, 64, 3]"),
    (np.zeros((48, 80, 3), np.int32), "got int32 [48, 80, 3]"),
    (np.zeros((48, 80, 2), np.uint8), "expected a uint8 RGB image [H, W, 3]"),
    (np.zeros((0, 80, 3), np.uint8), "got uint8 [0, 80, 3]"),
    ([[1, 2], [3, 4]], "got int64 [2, 2]"),
], ids=["float64", "nan", "inf", "shape", "nhwc", "int32-image", "two-channels", "empty", "list"])
def test_runtime_refuses_bad_arrays(segmenter, value, message):
    with pytest.raises(ImageError) as e:
        segmenter(value)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_runtime_converts_grey_rgba_and_pil_images(segmenter, rgb):
    expected = segmenter(rgb)
    assert np.array_equal(segmenter(np.dstack([rgb, np.zeros(rgb.shape[:2], np.uint8)])), expected)
    assert np.array_equal(segmenter(Image.fromarray(rgb)), expected)
    grey = rgb[..., 1]
    assert np.array_equal(segmenter(grey), segmenter(np.repeat(grey[..., None], 3, axis=2)))
    assert segmenter(rgb[:1, :1]).shape == (1, 1)


@pytest.mark.parametrize("text", ["16x16", "9000x64", "64x8193", "0x64", "64"])
def test_model_input_size_limits(text):
    from pipeline.common.inputs import parse_size

    with pytest.raises(ValueError, match="outside 32 to 8192|not HxW"):
        parse_size(text)
    assert parse_size("32x8192") == (32, 8192)


# --- the error boundary itself ---

def test_error_line_names_unexpected_errors_and_skips_tracebacks():
    assert error_line(ValueError("x.png: bad\nmore")) == "x.png: bad"
    assert error_line(RuntimeError("Traceback (most recent call last):\n  File a\nInternalError: boom")) == \
        "InternalError: boom"
    assert error_line(KeyError("input_shape")).startswith("KeyError: 'input_shape' (ppmseg --debug")
    assert error_line(MemoryError()).startswith("MemoryError (ppmseg --debug")


def test_debug_shows_the_traceback(files, tmp_path):
    proc = run_cli("--debug", "run", "--artifact", str(files / "nowhere"), "--input", str(files / "x.npy"),
                   "-o", str(tmp_path / "o.npy"), check=False)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "no such artifact directory" in proc.stderr
    assert not (tmp_path / "o.npy").exists()
