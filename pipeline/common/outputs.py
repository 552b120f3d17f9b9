"""Saving what a model produced: arrays, colour label maps, overlays, class shares."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from model.image import ade20k_classes, colorize
from pipeline.common.files import atomic_path

OUTPUT_SUFFIXES = (".npy", ".png")


def check_output_path(path: str | Path, labels: bool) -> Path:
    """Refuse an output name we cannot write before any work is done."""
    path = Path(path)
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"{path}: output must end in {' or '.join(OUTPUT_SUFFIXES)}")
    if path.suffix.lower() == ".png" and not labels:
        raise ValueError(f"{path}: logits can only be saved as .npy")
    return path


def _write_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(rgb).save(path, format="PNG")


_WRITERS = {".npy": _write_npy, ".png": _write_png}


def save_array(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        _write_npy(tmp, array)


def save_png(path: str | Path, rgb: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        _write_png(tmp, rgb)


def save_together(files: Mapping[Path, np.ndarray]) -> None:
    """Write several files all or none: ``.png`` an RGB image, ``.npy`` the array. Each is
    written beside its place under a temporary name; all are moved into place only once
    every one is written, so a failure (a full disk) leaves none of them half done."""
    with ExitStack() as stack:
        for path, array in files.items():
            suffix = Path(path).suffix.lower()
            if suffix not in _WRITERS:
                raise ValueError(f"{path}: output must end in {' or '.join(OUTPUT_SUFFIXES)}")
            _WRITERS[suffix](stack.enter_context(atomic_path(path)), array)


def save_output(path: str | Path, output: np.ndarray, num_classes: int) -> None:
    """``.npy``: the array as it is; ``.png``: a label map in PaddleSeg's colours."""
    if Path(path).suffix.lower() == ".png":
        save_png(path, colorize(output, num_classes))
    else:
        save_array(path, output)


def overlay(image: np.ndarray, labels: np.ndarray, num_classes: int, alpha: float = 0.5) -> np.ndarray:
    """The photo with the colour label map blended over it."""
    blend = (1 - alpha) * image.astype(np.float32) + alpha * colorize(labels, num_classes).astype(np.float32)
    return blend.round().astype(np.uint8)


def class_shares(labels: np.ndarray, num_classes: int) -> list[tuple[int, str, float]]:
    """(class id, name, share of pixels) for every class present, largest first."""
    names = ade20k_classes() if num_classes == len(ade20k_classes()) else ()
    ids, counts = np.unique(labels, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return [(int(ids[i]), names[ids[i]] if names else f"class {ids[i]}", float(counts[i] / labels.size))
            for i in order]
