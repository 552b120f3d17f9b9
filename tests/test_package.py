"""``pipeline.deploy.bundle``: real artifacts, real runner builds, bundles unpacked and run as
processes (the aarch64 one under qemu-user with Debian's aarch64 glibc)."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.image import resize_labels, sample_image_path
from pipeline.compile.artifact import elf_machine
from pipeline.deploy.bundle import BUNDLE_DIR, PackageError, package

HOST_SIZE = (128, 160)
A64_SIZE = (128, 128)
EXPECTED_FILES = {"model.so", "meta.json", "ppmseg-run", "libtvm_runtime.so", "libtvm_ffi.so", "run.sh",
                  "README.txt", "SHA256SUMS"}
TIE = 1e-5


def _compile(out: Path, **request) -> Path:
    from pipeline.compile.build import CompileRequest, compile_artifact

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("TRACKER", raising=False)  # sd855 = the emulated device, cross-linked here
        compile_artifact(CompileRequest(model="tiny", **request), out, log=lambda _m: None)
    return out


@pytest.fixture(scope="module")
def host_artifact(tmp_path_factory) -> Path:
    """Two input sizes: the bundle's runner places each image in the entry nearest its ratio."""
    return _compile(tmp_path_factory.mktemp("host-art"), input_size=HOST_SIZE, other_sizes=(HOST_SIZE[::-1],))


@pytest.fixture(scope="module")
def a64_artifact(tmp_path_factory) -> Path:
    return _compile(tmp_path_factory.mktemp("a64-art"), device="sd855", input_size=A64_SIZE)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> tuple[Path, np.ndarray]:
    rgb = np.asarray(Image.open(sample_image_path()).convert("RGB"))
    ppm = tmp_path_factory.mktemp("photo") / "photo.ppm"
    Image.fromarray(rgb).save(ppm)  # binary P6
    assert ppm.read_bytes()[:2] == b"P6"
    return ppm, rgb


@pytest.fixture(scope="module")
def aarch64_sysroot() -> Path:
    """The aarch64 glibc for qemu's -L: /usr/aarch64-linux-gnu from Debian's libc6-arm64-cross
    and libstdc++6-arm64-cross (pulled in by g++-aarch64-linux-gnu), else the emulator's."""
    from rpc import emulator

    for root in (Path("/usr/aarch64-linux-gnu"), emulator.default_dir() / "sysroot"):
        if all(any((root / d / n).exists() for d in ("lib", "lib/aarch64-linux-gnu", "usr/lib/aarch64-linux-gnu"))
               for n in ("ld-linux-aarch64.so.1", "libc.so.6", "libstdc++.so.6")):
            return root
    pytest.fail("no aarch64 glibc for qemu -L: apt-get install g++-aarch64-linux-gnu (or make emulator)")


def unpack(bundle: Path, dest: Path) -> Path:
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
        assert {n.split("/")[0] for n in names} == {BUNDLE_DIR}  # one top-level folder
        assert {n.split("/", 1)[1] for n in names if "/" in n} == EXPECTED_FILES
        tar.extractall(dest, filter="data")
    root = dest / BUNDLE_DIR
    for name in ("run.sh", "ppmseg-run"):
        assert os.access(root / name, os.X_OK), name
    for line in (root / "SHA256SUMS").read_text().splitlines():  # what `sha256sum -c` checks
        digest, name = line.split("  ", 1)
        assert hashlib.sha256((root / name).read_bytes()).hexdigest() == digest, name
    return root


def run(*cmd, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "QEMU")}
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**environ, **(env or {})})


def ok(*cmd, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = run(*cmd, cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc


def read_pgm(path: Path) -> np.ndarray:
    magic, dims, maxval, rest = path.read_bytes().split(b"\n", 3)
    w, h = map(int, dims.split())
    assert magic == b"P5" and int(maxval) == 255 and len(rest) == w * h
    return np.frombuffer(rest, np.uint8).reshape(h, w).astype(np.int32)


def test_host_bundle_runs_and_equals_python_runtime(host_artifact, photo, tmp_path):
    from pipeline.deploy.runtime import load

    t0 = time.perf_counter()
    bundle = package(host_artifact, "host", tmp_path / "bundle.tar.gz")
    print(f"\nhost bundle {bundle.stat().st_size / 1e6:.2f} MB in {time.perf_counter() - t0:.1f} s")
    assert bundle == tmp_path / "bundle.tar.gz"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle.tar.gz"]  # no temp files left
    root = unpack(bundle, tmp_path / "unpacked")
    assert elf_machine(root / "ppmseg-run") == elf_machine(root / "libtvm_runtime.so") == "x86_64"
    assert json.loads((root / "meta.json").read_text()) == json.loads((host_artifact / "meta.json").read_text())

    ppm, rgb = photo
    shutil.copy(ppm, tmp_path / "photo.ppm")
    ok(root / "run.sh", "--input", "photo.ppm", "-o", "labels.pgm", cwd=tmp_path)  # paths relative to cwd
    labels = read_pgm(tmp_path / "labels.pgm")
    expected = load(host_artifact)(rgb)
    assert labels.shape == rgb.shape[:2]
    assert np.array_equal(labels, expected)

    # The runner finds the bundled libraries through its $ORIGIN rpath too, without run.sh.
    ok(root / "ppmseg-run", root, "--input", "photo.ppm", "-o", "direct.pgm", cwd=tmp_path)
    assert np.array_equal(read_pgm(tmp_path / "direct.pgm"), expected)
    # A portrait photo runs in the portrait entry, as in the Python runtime.
    portrait = np.ascontiguousarray(rgb[:, : rgb.shape[0] * 3 // 4])
    Image.fromarray(portrait).save(tmp_path / "portrait.ppm")
    proc = ok(root / "run.sh", "--input", "portrait.ppm", "-o", "portrait.pgm", "-v", cwd=tmp_path)
    assert "in the 160x128 entry" in proc.stdout
    assert np.array_equal(read_pgm(tmp_path / "portrait.pgm"), load(host_artifact)(portrait))
    readme = (root / "README.txt").read_text()
    assert "x86_64 Linux" in readme and "glibc >=" in readme
    assert "--input photos/ -o out/" in readme  # the folder form is on the bundle's own page


def test_aarch64_bundle_under_qemu_equals_pytorch(a64_artifact, photo, aarch64_sysroot, tmp_path):
    from model.weights import load_model
    from pipeline.common.inputs import load_input
    from pipeline.deploy.remote import host_reference

    t0 = time.perf_counter()
    bundle = package(a64_artifact, "sd855", tmp_path / "bundle.tar.gz")
    print(f"\naarch64 bundle {bundle.stat().st_size / 1e6:.2f} MB in {time.perf_counter() - t0:.1f} s")
    root = unpack(bundle, tmp_path / "unpacked")
    for name in ("ppmseg-run", "libtvm_runtime.so", "libtvm_ffi.so", "model.so"):
        assert elf_machine(root / name) == "aarch64", name
    readme = (root / "README.txt").read_text()
    assert "DOES NOT RUN ON ANDROID" in readme and "NDK" in readme and "adb push" in readme

    meta = json.loads((root / "meta.json").read_text())
    ppm, rgb = photo
    shutil.copy(ppm, tmp_path / "photo.ppm")
    x = load_input(tmp_path / "photo.ppm", tuple(meta["mean"]), tuple(meta["std"]), A64_SIZE).tensor.numpy()
    x.tofile(tmp_path / "x.bin")

    # Without QEMU on another machine, run.sh says so in one line.
    if os.uname().machine != "aarch64":
        proc = run(root / "run.sh", "--raw", "x.bin", "-o", "no.pgm", cwd=tmp_path)
        assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1 and "set QEMU" in proc.stderr
        assert not (tmp_path / "no.pgm").exists()

    qemu = {"QEMU": shlex.join(["qemu-aarch64", "-L", str(aarch64_sysroot), "-cpu", "cortex-a76"])}
    t1 = time.perf_counter()
    ok(root / "run.sh", "--raw", "x.bin", "-o", "raw.pgm", cwd=tmp_path, env=qemu)
    ok(root / "run.sh", "--input", "photo.ppm", "-o", "image.pgm", "--dump-input", "x_dev.bin",
       cwd=tmp_path, env=qemu)
    print(f"two runs under qemu in {time.perf_counter() - t1:.1f} s")

    # The device's preprocessing is the host's, bit for bit.
    assert np.array_equal(np.fromfile(tmp_path / "x_dev.bin", np.float32).reshape(x.shape), x)

    labels = read_pgm(tmp_path / "raw.pgm")
    with torch.inference_mode():
        expected = load_model("tiny", None, output="vim")(torch.from_numpy(x))[0].numpy()
    ref, margin = host_reference(meta, x)  # margin: top two upsampled logits over the classes VIM keeps
    assert np.array_equal(ref, expected)
    assert labels.shape == expected.shape == A64_SIZE
    differ = labels != expected
    assert not (differ & (margin >= TIE)).any(), f"{int(differ.sum())} pixels differ, some outside ties"
    print(f"aarch64 vs PyTorch: {1 - differ.mean():.4%} of pixels equal ({int(differ.sum())} in ties)")

    # The image run is the raw run's label map resized back to the photo (nearest).
    assert np.array_equal(read_pgm(tmp_path / "image.pgm"), resize_labels(labels, rgb.shape[:2]))


def _android_artifact(src: Path, dest: Path) -> Path:
    """The emulated artifact described as a real phone's (NDK link): packaging must refuse
    it before building anything when the NDK is missing."""
    shutil.copytree(src, dest)
    meta = json.loads((dest / "meta.json").read_text())
    meta.update(mode="device", emulated=False, linker="ndk",
                target={**meta["target"], "mtriple": "aarch64-linux-android"})
    (dest / "meta.json").write_text(json.dumps(meta))
    return dest


@pytest.mark.parametrize("case, message", [
    ("other-device", "compiled for device 'host', not 'sd855'"),
    ("other-device-2", "compiled for device 'sd855', not 'host'"),
    ("unknown-device", "unknown device 'pixel9'"),
    ("missing-artifact", "no such artifact directory"),
    ("not-an-artifact", "no meta.json"),
    ("tampered", "SHA-256 does not match"),
    ("missing-out-dir", "does not exist"),
    ("out-is-dir", "is a directory"),
    ("bad-suffix", "must end in .tar.gz or .tgz"),
    ("android-no-ndk", "set TVM_NDK_CC"),
    ("android-no-libs", "PPMSEG_ANDROID_TVM_LIBS"),
    ("compiler-fails", "failed"),
])
def test_errors_are_one_line_and_leave_nothing(host_artifact, a64_artifact, tmp_path, monkeypatch, case, message):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out, art, device = out_dir / "bundle.tar.gz", host_artifact, "host"
    if case == "other-device":
        device = "sd855"
    elif case == "other-device-2":
        art = a64_artifact
    elif case == "unknown-device":
        device = "pixel9"
    elif case == "missing-artifact":
        art = tmp_path / "nope"
    elif case == "not-an-artifact":
        art = tmp_path / "empty"
        art.mkdir()
    elif case == "tampered":
        art = tmp_path / "tampered"
        shutil.copytree(host_artifact, art)
        with open(art / "model.so", "ab") as f:
            f.write(b"\0")
    elif case == "missing-out-dir":
        out = tmp_path / "missing" / "bundle.tar.gz"
    elif case == "out-is-dir":
        out = out_dir
    elif case == "bad-suffix":
        out = out_dir / "bundle.zip"
    elif case.startswith("android"):
        art, device = _android_artifact(a64_artifact, tmp_path / "android"), "sd855"
        monkeypatch.delenv("PPMSEG_ANDROID_TVM_LIBS", raising=False)
        if case == "android-no-ndk":
            monkeypatch.delenv("TVM_NDK_CC", raising=False)
        else:
            monkeypatch.setenv("TVM_NDK_CC", shutil.which("aarch64-linux-gnu-g++") or "/bin/true")
    elif case == "compiler-fails":
        monkeypatch.setenv("CXX", "false")  # starts, then fails: the runner build step
    with pytest.raises(ValueError) as e:
        package(art, device, out)
    text = str(e.value)
    assert message in text and "\n" not in text, text
    assert not out.exists() or out.is_dir()
    assert list(out_dir.iterdir()) == []  # no bundle, no temporary file
    assert not (tmp_path / "missing").exists()


def test_failure_while_writing_keeps_the_old_bundle(host_artifact, tmp_path, monkeypatch):
    import pipeline.deploy.bundle as pkg

    out = tmp_path / "bundle.tar.gz"
    out.write_bytes(b"previous bundle")
    calls = []

    def failing_add(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 3:
            raise PackageError("disk full")
        return real_add(*args, **kwargs)

    real_add = pkg._add
    monkeypatch.setattr(pkg, "_add", failing_add)
    with pytest.raises(PackageError, match="disk full"):
        package(host_artifact, "host", out)
    assert out.read_bytes() == b"previous bundle"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle.tar.gz"]


def test_android_path_builds_with_tvm_ndk_cc_and_refuses_glibc_libraries(a64_artifact, tmp_path, monkeypatch):
    """No NDK can be fetched here: the glibc cross g++ stands in for its clang++ and the wheel's
    aarch64 libraries for an NDK-built runtime. The runner is built with TVM_NDK_CC, and the
    bundle is refused because it would need glibc's libstdc++, which an Android phone lacks."""
    from rpc import emulator

    libs = tmp_path / "android-libs"
    libs.mkdir()
    site = emulator.default_dir() / "site"
    for lib in (site / "tvm" / "lib" / "libtvm_runtime.so", site / "tvm_ffi" / "lib" / "libtvm_ffi.so"):
        shutil.copy(lib, libs / lib.name)
    monkeypatch.setenv("TVM_NDK_CC", "aarch64-linux-gnu-g++")
    monkeypatch.setenv("PPMSEG_ANDROID_TVM_LIBS", str(libs))
    art = _android_artifact(a64_artifact, tmp_path / "android")
    logs = []
    with pytest.raises(PackageError, match="needs libstdc\\+\\+.so.6, which is neither a system library") as e:
        package(art, "sd855", tmp_path / "bundle.tar.gz", log=logs.append)
    assert "\n" not in str(e.value)
    assert any("Android NDK (aarch64-linux-gnu-g++)" in m for m in logs), logs
    assert not (tmp_path / "bundle.tar.gz").exists()
