"""The ADE20K validation split as PaddleSeg reads it (``paddleseg/datasets/ade.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

ADE_DIR = "ADEChallengeData2016"
SPLIT = "validation"
NUM_CLASSES = 150
IGNORE_INDEX = 255  # PaddleSeg's ADE20K.IGNORE_INDEX


class DatasetError(ValueError):
    """A folder that is not an ADE20K validation split we can score."""


@dataclass(frozen=True)
class Sample:
    image: Path
    annotation: Path


def find_root(path: str | Path) -> Path:
    """``PATH/ADEChallengeData2016`` or ``PATH`` itself, whichever holds the split."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such directory")
    for root in (path / ADE_DIR, path):
        if (root / "images" / SPLIT).is_dir() and (root / "annotations" / SPLIT).is_dir():
            return root
    raise DatasetError(f"{path}: not an ADE20K folder: expected {ADE_DIR}/images/{SPLIT} and "
                       f"{ADE_DIR}/annotations/{SPLIT} in it (or PATH to be {ADE_DIR})")


def _size_of(path: Path, what: str) -> tuple[int, int]:
    """(H, W) from the file header, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.height, im.width
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: not a readable {what} ({e})") from None


def list_samples(path: str | Path, limit: int | None = None) -> list[Sample]:
    """The validation images (sorted by name, the first ``limit``) and their annotations.
    Missing annotations and size mismatches are refused here, before any inference."""
    root = find_root(path)
    image_dir, label_dir = root / "images" / SPLIT, root / "annotations" / SPLIT
    images = sorted(p for p in image_dir.iterdir() if p.suffix == ".jpg" and p.is_file())
    if not images:
        raise DatasetError(f"{image_dir}: no .jpg images")
    if limit is not None:
        images = images[:limit]
    samples = [Sample(p, label_dir / f"{p.stem}.png") for p in images]
    missing = [s.annotation for s in samples if not s.annotation.is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} of {len(samples)} images have no annotation: {missing[0]} is missing")
    for s in samples:
        image_size, label_size = _size_of(s.image, "image"), _size_of(s.annotation, "annotation")
        if image_size != label_size:
            raise DatasetError(f"{s.annotation}: annotation is {label_size[0]}x{label_size[1]} (HxW) but its image "
                               f"{s.image.name} is {image_size[0]}x{image_size[1]}")
    return samples


def read_annotation(path: str | Path, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """An ADE20K annotation as PaddleSeg scores it: uint8 ``[H, W]``, 0 -> 255 (ignored),
    1..150 -> 0..149."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise DatasetError(f"{path}: annotation is a {im.mode} image, not a single-channel label map")
            raw = np.asarray(im)
    except DatasetError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: not a readable annotation ({e})") from None
    top = int(raw.max()) if raw.size else 0
    if top > num_classes or int(raw.min()) < 0:
        raise DatasetError(f"{path}: label {top} out of range (0 = ignored, 1..{num_classes} = classes)")
    return (raw.astype(np.uint8) - np.uint8(1)).astype(np.uint8)  # 0 wraps to 255, as in PaddleSeg


def check_classes(num_classes: int, what: str) -> None:
    if num_classes != NUM_CLASSES:
        raise DatasetError(f"{what} has {num_classes} classes; ADE20K evaluation needs the {NUM_CLASSES}-class model")
