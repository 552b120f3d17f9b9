"""A library's input shapes: one or several (``--input-size 512x512,512x704`` or a named set),
and where an image goes in a library with several: the entry nearest its aspect ratio,
PaddleSeg's keep-ratio resize into that entry, zeros (after normalization) below and to the
right of it."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from model.image import SIZE_DIVISOR, eval_size, normalize_image
from pipeline.common.inputs import parse_size

Size = tuple[int, int]  # (rows, columns)

# More entries than this is a mistyped list: each one is a copy of the network's kernels.
MAX_ENTRIES = 8
# Camera frames (rows x columns) whose PaddleSeg eval sizes make the ``phone`` set: square,
# 4:3 (4032x3024) and 16:9 (1920x1080), landscape and portrait.
CAMERA_FRAMES: tuple[Size, ...] = ((3024, 3024), (3024, 4032), (4032, 3024), (1080, 1920), (1920, 1080))
NAMED_SETS: dict[str, tuple[Size, ...]] = {"phone": tuple(eval_size(*frame) for frame in CAMERA_FRAMES)}


def parse_sizes(text: str) -> tuple[Size, ...]:
    """``"HxW"`` (one size, any sides ``parse_size`` accepts), ``"HxW,HxW,..."`` (sides
    multiples of 32, as PaddleSeg's eval resize makes them, no repeats, at most
    ``MAX_ENTRIES``) or a name from ``NAMED_SETS``. The first size is the library's default."""
    if text.lower() in NAMED_SETS:
        return NAMED_SETS[text.lower()]
    sizes = tuple(parse_size(part.strip()) for part in text.split(","))
    if len(sizes) == 1:
        return sizes
    if len(sizes) > MAX_ENTRIES:
        raise ValueError(f"{len(sizes)} input sizes; at most {MAX_ENTRIES} (each is a copy of the network's kernels)")
    if odd := next((s for s in sizes if s[0] % SIZE_DIVISOR or s[1] % SIZE_DIVISOR), None):
        raise ValueError(f"input size {odd[0]}x{odd[1]}: with several sizes every side is a multiple of "
                         f"{SIZE_DIVISOR}, as PaddleSeg's eval resize makes them")
    if len(set(sizes)) < len(sizes):
        twice = next(s for s in sizes if sizes.count(s) > 1)
        raise ValueError(f"input size {twice[0]}x{twice[1]} is given twice")
    return sizes


def size_text(sizes: Sequence[Size]) -> str:
    """The ``--input-size`` text of ``sizes`` (a set's name where it is one)."""
    name = next((n for n, s in NAMED_SETS.items() if tuple(sizes) == s), None)
    return name or ",".join(f"{h}x{w}" for h, w in sizes)


def size_label(sizes: Sequence[Size]) -> str:
    """``sizes`` in a file name: ``512x512``, a set's name, or ``512x512+512x704``."""
    return size_text(sizes).replace(",", "+")


def nearest_entry(height: int, width: int, entries: Sequence[Size]) -> int:
    """The index of the entry whose aspect ratio is nearest the image's (on a log scale, so
    2:1 and 1:2 are equally far from square; the first of equals)."""
    ratio = math.log(width / height)
    return min(range(len(entries)), key=lambda i: abs(math.log(entries[i][1] / entries[i][0]) - ratio))


def placement(height: int, width: int, entry: Size) -> Size:
    """PaddleSeg's keep-ratio resize into ``entry``: the image scaled to fit, sides rounded up
    to a multiple of 32 (never past the entry, whose sides are multiples of 32). An image
    whose eval size is ``entry`` fills it."""
    scale = min(entry[0] / height, entry[1] / width)
    return tuple(min(bound, max(SIZE_DIVISOR, math.ceil(round(side * scale) / SIZE_DIVISOR) * SIZE_DIVISOR))
                 for side, bound in zip((height, width), entry, strict=True))


def letterbox(image: np.ndarray, entry: Size, mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, Size]:
    """uint8 RGB ``[H, W, 3]`` as the normalized float32 ``[1, 3, *entry]`` input: resized to
    its ``placement``, zeros below and to the right. Returns the input and the placed size
    (the part of the label map that is the image)."""
    placed = placement(image.shape[0], image.shape[1], entry)
    x = np.zeros((1, 3, *entry), np.float32)
    x[:, :, :placed[0], :placed[1]] = normalize_image(image, placed, tuple(mean), tuple(std)).numpy()
    return x, placed
