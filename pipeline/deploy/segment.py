"""Segmenting many images with one loaded library (``ppmseg segment IMAGE_OR_DIR... -o DIR``):
collect the images, decide where each result goes, then run them in turn. A bad file is
reported in one line and skipped; the others are still written."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.image import colorize, read_image
from pipeline.common.errors import message_line
from pipeline.common.outputs import overlay, save_together
from pipeline.common.progress import progress_bar
from pipeline.deploy.runtime import CompiledSegmenter

# What a directory scan picks up (compared in lower case): the extensions of the formats Pillow
# and OpenCV both read photographs from. A file named on the command line is tried whatever its
# extension.
IMAGE_SUFFIXES = (".avif", ".bmp", ".dib", ".gif", ".jfif", ".jpe", ".jpeg", ".jpg", ".pbm", ".pgm", ".png",
                  ".pnm", ".ppm", ".tif", ".tiff", ".webp")
# Output names that look like a file, not the directory the many-image form writes into.
FILE_SUFFIXES = (*IMAGE_SUFFIXES, ".npy")


@dataclass(frozen=True)
class Job:
    """One image and the files its results go to."""

    image: Path
    colour: Path
    overlay: Path
    labels: Path | None = None

    @property
    def outputs(self) -> tuple[Path, ...]:
        return tuple(p for p in (self.colour, self.overlay, self.labels) if p is not None)


@dataclass
class Outcome:
    """What a run over many images did. ``seconds`` runs from the first image read to the last
    file written: decoding, preprocessing, inference and writing, not loading the library."""

    total: int
    segmented: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.segmented / self.seconds if self.seconds > 0 else 0.0


def is_single(inputs: Sequence[Path], output: Path) -> bool:
    """The single-image form: one input that is not a directory, and ``-o`` ending in ``.png``."""
    return len(inputs) == 1 and not inputs[0].is_dir() and output.suffix.lower() == ".png"


def single_job(image: Path, colour: Path, labels: Path | None) -> Job:
    """The single-image form's files: ``out.png``, ``out-overlay.png`` beside it, the label map if asked."""
    return Job(image, colour, colour.with_name(f"{colour.stem}-overlay.png"), labels)


def images_in(directory: Path) -> list[Path]:
    """The image files directly in ``directory``, found by extension (any case), in name order.
    Hidden files are skipped: they are editors' and other tools' leftovers (and our own
    temporary files, should ``-o`` be the input directory)."""
    found = sorted((p for p in directory.iterdir()
                    if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()),
                   key=lambda p: p.name)
    if not found:
        raise ValueError(f"{directory}: no images in this directory (looked for {' '.join(IMAGE_SUFFIXES)}; "
                         "subdirectories are not searched)")
    return found


def collect_images(inputs: Sequence[Path]) -> list[Path]:
    """The images to segment, in the order given: files as they are, directories expanded.
    A missing path is refused at once: a mistyped name should not cost a whole run."""
    images: list[Path] = []
    for path in inputs:
        if path.is_dir():
            images += images_in(path)
        elif path.exists():
            images.append(path)
        else:
            raise ValueError(f"{path}: no such file or directory")
    return images


def plan(images: Sequence[Path], out_dir: Path, save_labels: bool) -> list[Job]:
    """``OUT_DIR/<stem>.png`` and ``<stem>-overlay.png`` (and ``<stem>.npy``) for each image.
    Refuses, before any work, two images that would write the same file (the same stem, or
    one named like the other's overlay) and an output that would overwrite an input."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a directory")
    jobs = [Job(image, out_dir / f"{image.stem}.png", out_dir / f"{image.stem}-overlay.png",
                out_dir / f"{image.stem}.npy" if save_labels else None) for image in images]
    _check_distinct(jobs)
    return jobs


def _check_distinct(jobs: Sequence[Job]) -> None:
    inputs = {job.image.resolve(): job.image for job in jobs}
    writers: dict[Path, Path] = {}
    for job in jobs:
        for out in job.outputs:
            key = out.resolve()
            if key in inputs:
                raise ValueError(f"{out} would overwrite the input {inputs[key]}; write into another directory")
            if key in writers:
                first = writers[key]
                if first.resolve() == job.image.resolve():
                    raise ValueError(f"{job.image} is given twice")
                raise ValueError(f"{first} and {job.image} would both write {out}; rename one, or segment "
                                 "them in separate calls")
            writers[key] = job.image


def segment_image(seg: CompiledSegmenter, job: Job) -> np.ndarray:
    """Read, segment and write one image's results (all of them or none); its label map."""
    photo = read_image(job.image)
    labels = seg(photo)
    n = seg.num_classes
    files = {job.colour: colorize(labels, n), job.overlay: overlay(photo, labels, n)}
    if job.labels is not None:
        files[job.labels] = labels
    save_together(files)
    return labels


def failure_reason(image: Path, error: BaseException) -> str:
    """The error's one line, without the file name it usually starts with (the report adds it)."""
    line = message_line(error) or type(error).__name__
    prefix = f"{image}: "
    return line[len(prefix):] if line.startswith(prefix) else line


def entry_line(seg: CompiledSegmenter, image: Path, labels: np.ndarray) -> str:
    """Which of the library's input shapes an image of ``labels``' size ran in."""
    h, w = labels.shape
    eh, ew = seg.entry_for(h, w).size
    return f"{image}: {h}x{w} in the {eh}x{ew} entry"


def segment_all(seg: CompiledSegmenter, jobs: Sequence[Job], progress: bool = True,
                verbose: bool = False) -> Outcome:
    """Segment every job with the one loaded library, with a progress bar on stderr. A file that
    cannot be read or written (ValueError, OSError: how the project reports bad input) is
    reported as ``error: <file>: <reason>`` and skipped; any other error stops the run.
    ``verbose``: each image's entry (``entry_line``) on stdout."""
    outcome = Outcome(total=len(jobs))
    start = time.perf_counter()
    with progress_bar(len(jobs), "segment", progress) as bar:
        for job in jobs:
            try:
                labels = segment_image(seg, job)
                outcome.segmented += 1
                if verbose:
                    bar.write(entry_line(seg, job.image, labels), file=sys.stdout)
            except (ValueError, OSError) as e:
                reason = failure_reason(job.image, e)
                outcome.failed.append((job.image, reason))
                bar.write(f"error: {job.image}: {reason}", file=sys.stderr)  # above the bar, not through it
            bar.update(1)
    outcome.seconds = time.perf_counter() - start
    return outcome
