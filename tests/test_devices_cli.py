"""The device commands as a user types them: a local tracker, a host server and the
emulated SD855, real processes on 127.0.0.1, each run compared with the host."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.image import read_image, sample_image_path
from pipeline.deploy.runtime import load

EXE = str(Path(sys.executable).with_name("ppmseg"))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Private tracker state, no user tracker: local mode."""
    e = {k: v for k, v in os.environ.items() if k != "TRACKER"}
    e["PPMSEG_RPC_DIR"] = str(tmp_path_factory.mktemp("rpc"))
    yield e
    subprocess.run([EXE, "tracker", "stop"], env=e, capture_output=True, timeout=120)


def cli(env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([EXE, *args], env=env, capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_host_through_tracker_equals_local_run(env, tmp_path):
    out = cli(env, "tracker", "start", "--device", "host").stdout
    assert "tracker on 127.0.0.1:" in out and "key host" in out
    assert "host" in cli(env, "devices").stdout
    art = tmp_path / "art"
    cli(env, "compile", "--model", "tiny", "--device", "host", "--input-size", "128x160", "-o", str(art))
    x = np.random.default_rng(3).standard_normal((1, 3, 128, 160)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    proc = cli(env, "run", "--artifact", str(art), "--device", "host", "--input", str(tmp_path / "x.npy"),
               "-o", str(tmp_path / "remote.npy"))
    assert "100.0000% of pixels equal" in proc.stdout
    assert np.array_equal(np.load(tmp_path / "remote.npy"), load(art)(x))
    timing = json.loads(cli(env, "bench", "--artifact", str(art), "--device", "host", "--repeat", "3", "--json").stdout)
    assert timing["median_ms"] > 0 and timing["p90_ms"] >= timing["median_ms"] and timing["threads"] == 1
    assert timing["emulated"] is False and len(timing["repeats_ms"]) == 3


def test_emulated_sd855_equals_host(env, tmp_path):
    """A library of two sizes on the emulated SD855: the landscape photo runs in the landscape
    entry, a tensor in the entry of its shape, each equal to PyTorch outside ties."""
    art = tmp_path / "sd855"
    built = cli(env, "compile", "--model", "tiny", "--device", "sd855", "--input-size", "128x128,128x160",
                "-o", str(art))
    assert "(emulated)" in built.stdout and "aarch64-linux-gnu" in built.stdout
    meta = json.loads((art / "meta.json").read_text())
    assert meta["arch"] == "aarch64" and meta["emulated"] is True and meta["target"]["mcpu"] == "cortex-a76"
    photo = read_image(sample_image_path())
    assert photo.shape[1] > photo.shape[0]  # landscape
    proc = cli(env, "run", "--artifact", str(art), "--device", "sd855", "--input", str(sample_image_path()),
               "-o", str(tmp_path / "labels.npy"))
    assert "sd855 (emulated) main_128x160 vs PyTorch on this machine" in proc.stdout
    assert "0 differ outside" in proc.stdout and np.load(tmp_path / "labels.npy").shape == photo.shape[:2]
    np.save(tmp_path / "x.npy", np.random.default_rng(1).standard_normal((1, 3, 128, 128)).astype(np.float32))
    proc = cli(env, "run", "--artifact", str(art), "--device", "sd855", "--input", str(tmp_path / "x.npy"),
               "-o", str(tmp_path / "labels.npy"))
    assert "sd855 (emulated) vs PyTorch" in proc.stdout and "0 differ outside" in proc.stdout
    assert np.load(tmp_path / "labels.npy").shape == (128, 128)
    timed = cli(env, "bench", "--artifact", str(art), "--device", "sd855", "--repeat", "2", "--number", "1")
    assert "EMULATED" in timed.stdout and "median" in timed.stdout
    # Running the aarch64 library here, or on the wrong device, is a one-line refusal.
    wrong = cli(env, "run", "--artifact", str(art), "--input", str(sample_image_path()), "-o",
                str(tmp_path / "x.npy"), check=False)
    assert wrong.returncode == 1 and "built for aarch64" in wrong.stderr
    wrong = cli(env, "run", "--artifact", str(art), "--device", "host", "--input", str(sample_image_path()), "-o",
                str(tmp_path / "x.npy"), check=False)
    assert wrong.returncode == 1 and "compiled for device 'sd855', not 'host'" in wrong.stderr


def test_phone_without_ndk_is_a_clear_error(env, tmp_path):
    e = {**env, "TRACKER": "127.0.0.1:1"}
    e.pop("TVM_NDK_CC", None)
    proc = cli(e, "compile", "--model", "tiny", "--device", "sd855", "-o", str(tmp_path / "a"), check=False)
    assert proc.returncode == 1 and "TVM_NDK_CC" in proc.stderr and len(proc.stderr.strip().splitlines()) == 2
    assert not (tmp_path / "a").exists()


def test_bench_times_the_input_size_asked_for(env, tmp_path):
    """A library of several sizes: ``--entry HxW`` times that size's ``main``; a size the
    library does not have is a usage error naming the ones it has. ``run --device`` runs a
    portrait photo in the portrait entry and a tensor in the entry of its shape, as the
    runtime here does."""
    cli(env, "tracker", "start", "--device", "host")
    art = tmp_path / "art"
    cli(env, "compile", "--model", "tiny", "--input-size", "128x160,160x128", "-o", str(art))
    portrait = tmp_path / "portrait.png"
    Image.fromarray(read_image(sample_image_path())[:300, :200]).save(portrait)
    for name, path in (("photo", portrait), ("tensor", tmp_path / "x.npy")):
        if name == "tensor":
            np.save(path, np.random.default_rng(0).standard_normal((1, 3, 160, 128)).astype(np.float32))
        cli(env, "run", "--artifact", str(art), "--device", "host", "--input", str(path), "-o", str(tmp_path / "d.npy"))
        cli(env, "run", "--artifact", str(art), "--input", str(path), "-o", str(tmp_path / "h.npy"))
        remote, here = np.load(tmp_path / "d.npy"), np.load(tmp_path / "h.npy")
        assert remote.shape == ((300, 200) if name == "photo" else (160, 128)) and np.array_equal(remote, here), name
    timing = json.loads(cli(env, "bench", "--artifact", str(art), "--device", "host", "--entry", "160x128",
                            "--repeat", "2", "--number", "1", "--json").stdout)
    assert timing["function"] == "main_160x128" and timing["median_ms"] > 0
    bad = cli(env, "bench", "--artifact", str(art), "--device", "host", "--entry", "64x64", check=False)
    assert bad.returncode == 2
    assert "64x64 is not one of the library's input sizes (128x160, 160x128)" in bad.stderr
