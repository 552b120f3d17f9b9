"""``ppmseg segment`` on many images in one call (pipeline/deploy/segment.py), through the real
CLI: files and directories together, outputs named by stem, a bad file reported and skipped,
and every refusal made before any work. The single-image form is also driven by
tests/test_compile.py and tests/test_bad_input.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.image import palette, read_image
from pipeline.common.outputs import save_together
from tests.conftest import run_cli
from tests.test_bad_input import small_artifact


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    return small_artifact(tmp_path_factory)


@pytest.fixture(scope="module")
def segmenter(artifact):
    from pipeline.deploy.runtime import load

    return load(artifact)


def photo(seed: int, hw: tuple[int, int] = (48, 80)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)


def save(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def segment(*args: object, check: bool = False) -> subprocess.CompletedProcess:
    return run_cli("segment", *map(str, args), check=check)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """stderr's lines without the progress bar (tqdm redraws it with carriage returns)."""
    return [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("segment:")]


def assert_results(out: Path, image: Path, segmenter, labels_too: bool = False) -> None:
    """``out/<stem>.png`` is the colour map of the image's labels and the overlay is beside it."""
    expected = segmenter(read_image(image))
    assert np.array_equal(np.asarray(Image.open(out / f"{image.stem}.png")), palette(segmenter.num_classes)[expected])
    assert np.asarray(Image.open(out / f"{image.stem}-overlay.png")).shape == (*expected.shape, 3)
    if labels_too:
        assert np.array_equal(np.load(out / f"{image.stem}.npy"), expected)


def test_files_and_a_directory_in_one_call(artifact, segmenter, tmp_path):
    folder = tmp_path / "photos"
    in_folder = [save(folder / "b.png", photo(1)), save(folder / "a.jpg", photo(2, (30, 20))),
                 save(folder / "c.BMP", photo(3))]
    (folder / "notes.txt").write_text("not an image, and not an image's extension: left alone\n")
    save(folder / ".hidden.png", photo(4))  # hidden: skipped
    save(folder / "sub" / "d.png", photo(5))  # not recursive
    loose = [save(tmp_path / "x.webp", photo(6, (64, 64))), save(tmp_path / "y.tif", photo(7))]
    out = tmp_path / "results" / "run1"  # created, parents too

    proc = segment(loose[0], folder, loose[1], "--artifact", artifact, "-o", out, "--save-labels", check=True)

    for image in [*in_folder, *loose]:
        assert_results(out, image, segmenter, labels_too=True)
    names = {p.name for p in out.iterdir()}
    assert names == {f"{s}{e}" for s in "abcxy" for e in (".png", "-overlay.png", ".npy")}
    assert "wrote 5 of 5 images to" in proc.stdout and "images/s" in proc.stdout
    assert error_lines(proc) == [] and "segment:" in proc.stderr  # the progress bar, on stderr


def test_a_bad_file_is_reported_skipped_and_fails_the_run(artifact, segmenter, tmp_path):
    folder = tmp_path / "photos"
    good = save(folder / "m.png", photo(1))
    data = save(folder / "ok.jpg", photo(2)).read_bytes()
    (folder / "ok.jpg").unlink()
    (folder / "b-truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "a-text.png").write_text("not an image\n")
    out = tmp_path / "out"

    proc = segment(folder, "--artifact", artifact, "-o", out)

    assert proc.returncode == 1, proc.stderr
    lines = error_lines(proc)
    assert len(lines) == 3 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"error: {folder / 'a-text.png'}: not a readable image (")  # in name order
    assert lines[0].count("a-text.png") == 2  # the file named once by us, once in Pillow's reason
    assert lines[1].startswith(f"error: {folder / 'b-truncated.jpg'}: not a readable image")
    assert lines[2] == "Error: 2 of 3 images failed (listed above)"
    assert "wrote 1 of 3 images" in proc.stdout
    assert_results(out, good, segmenter)
    assert sorted(p.name for p in out.iterdir()) == ["m-overlay.png", "m.png"]  # nothing half-written


def test_one_image_into_a_directory(artifact, segmenter, tmp_path):
    image = save(tmp_path / "only.jpeg", photo(3))
    segment(image, "--artifact", artifact, "-o", tmp_path / "out", check=True)
    assert_results(tmp_path / "out", image, segmenter)


@pytest.mark.parametrize("inputs, output, code, message", [
    (["{d}/a.jpg", "{d}/other/a.png"], "{t}/out", 1,
     "{d}/a.jpg and {d}/other/a.png would both write {t}/out/a.png"),
    (["{d}/a.jpg", "{d}/a-overlay.png"], "{t}/out", 1,
     "{d}/a.jpg and {d}/a-overlay.png would both write {t}/out/a-overlay.png"),
    (["{d}/other", "{d}/other/a.png"], "{t}/out", 1, "{d}/other/a.png is given twice"),
    (["{d}/a-overlay.png"], "{d}", 1, "{d}/a-overlay.png would overwrite the input {d}/a-overlay.png"),
    (["{t}/empty"], "{t}/out", 1, "{t}/empty: no images in this directory (looked for .avif"),
    (["{d}/a.jpg", "{t}/missing.png"], "{t}/out", 1, "{t}/missing.png: no such file or directory"),
    (["{d}/a.jpg", "{d}/other/a.png"], "{t}/a-file", 1, "{t}/a-file: exists and is not a directory"),
    (["{d}"], "{t}/out.png", 2, "{t}/out.png: several images are written into a directory; give -o DIR"),
    (["{d}/a.jpg"], "{t}/out.jpg", 2, "{t}/out.jpg: must end in .png"),
    (["{d}/a.jpg", "{d}/other/a.png"], "{t}/out", 2, "--labels names one file"),
], ids=["same-stem", "overlay-name", "twice", "overwrite-input", "empty-dir", "missing", "out-is-a-file",
        "dir-to-png", "one-to-jpg", "labels-file"])
def test_refused_before_any_work(artifact, tmp_path, inputs, output, code, message):
    d = tmp_path / "in"
    save(d / "a.jpg", photo(1))
    save(d / "a-overlay.png", photo(2))
    save(d / "other" / "a.png", photo(3))
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("")
    args = [a.format(d=d, t=tmp_path) for a in inputs]
    extra = ["--labels", tmp_path / "l.npy"] if "--labels" in message else []
    before = sorted(tmp_path.rglob("*"))

    proc = segment(*args, "--artifact", artifact, "-o", output.format(d=d, t=tmp_path), *extra)

    assert proc.returncode == code, proc.stderr
    assert message.format(d=d, t=tmp_path) in proc.stderr.splitlines()[-1], proc.stderr
    if code == 1:
        assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("Error: "), proc.stderr
    assert sorted(tmp_path.rglob("*")) == before  # nothing created: no output directory, no file


def test_single_form_is_unchanged(artifact, segmenter, tmp_path):
    """One image and -o ending in .png: out.png, out-overlay.png beside it, the classes printed."""
    image = save(tmp_path / "in" / "p.png", photo(4))
    out = tmp_path / "o" / "seg.png"
    proc = segment(image, "--artifact", artifact, "-o", out, "--labels", tmp_path / "l.npy", check=True)
    expected = segmenter(read_image(image))
    assert sorted(p.name for p in out.parent.iterdir()) == ["seg-overlay.png", "seg.png"]
    assert np.array_equal(np.load(tmp_path / "l.npy"), expected)
    assert np.array_equal(np.asarray(Image.open(out)), palette(segmenter.num_classes)[expected])
    lines = proc.stdout.splitlines()
    assert lines[0] == f"wrote {out} and {out.parent / 'seg-overlay.png'}"
    assert len(lines) == 1 + len(np.unique(expected)) and all("%" in ln for ln in lines[1:])
    assert proc.stderr == ""  # no progress bar for one image
    segment(image, "--artifact", artifact, "-o", out, "--save-labels", check=True)
    assert np.array_equal(np.load(out.with_suffix(".npy")), expected)


def test_save_together_writes_all_or_none(tmp_path):
    rgb, labels = photo(0), np.zeros((4, 4), np.int32)
    with pytest.raises(TypeError):  # the third cannot be written (Pillow has no image for object arrays)
        save_together({tmp_path / "a.png": rgb, tmp_path / "a.npy": labels,
                       tmp_path / "b.png": np.empty((2, 2), object)})
    assert list(tmp_path.iterdir()) == []  # neither the first two nor any temporary file
    save_together({tmp_path / "a.png": rgb, tmp_path / "a.npy": labels})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "a.png"]
