"""Saving what a model produced: arrays, colour label maps, overlays, class shares."""

from __future__ import annotations

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


def save_array(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def save_png(path: str | Path, rgb: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")


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
