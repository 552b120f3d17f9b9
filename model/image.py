"""Images in and label maps out: PaddleSeg's eval transforms, the colour palette,
the ADE20K class names and a real photograph shipped inside a PyPI package."""

from __future__ import annotations

import importlib.util
import math
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# PaddleSeg's ADE20K eval transform: keep the aspect ratio, fit into 2048x512
# (long x short side), round both sides up to a multiple of 32.
EVAL_TARGET = (2048, 512)
SIZE_DIVISOR = 32


class ImageError(ValueError):
    """An input that is not a usable image or tensor."""


def read_image(path: str | Path) -> np.ndarray:
    """An image file as uint8 RGB ``[H, W, 3]`` (grey and alpha images are converted,
    as OpenCV's colour read in PaddleSeg does)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: not a readable image ({e})") from None


def eval_size(height: int, width: int) -> tuple[int, int]:
    """PaddleSeg's ``Resize(target_size=[2048, 512], keep_ratio=True, size_divisor=32)``."""
    scale = min(max(EVAL_TARGET) / max(height, width), min(EVAL_TARGET) / min(height, width))
    return tuple(math.ceil(round(s * scale) / SIZE_DIVISOR) * SIZE_DIVISOR for s in (height, width))


def normalize_image(image: np.ndarray, size: tuple[int, int], mean: tuple[float, ...],
                    std: tuple[float, ...]) -> torch.Tensor:
    """uint8 RGB ``[H, W, 3]`` to the model's float32 ``[1, 3, h, w]`` input.

    Like PaddleSeg: resize the float image bilinearly with half-pixel centres and no
    antialiasing (OpenCV's INTER_LINEAR), then scale to [0, 1] and standardize.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ImageError(f"expected a uint8 RGB image [H, W, 3], got {image.dtype} {list(image.shape)}")
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    x = x / 255.0
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an ``[H, W]`` label map back to the image size."""
    if labels.shape == tuple(size):
        return labels
    t = torch.from_numpy(labels.astype(np.int32))[None, None].float()
    return F.interpolate(t, size=size, mode="nearest")[0, 0].to(torch.int32).numpy()


def palette(num_classes: int) -> np.ndarray:
    """PaddleSeg's colour map, ``[N, 3]`` uint8: the PASCAL VOC bit-interleaved
    palette, shifted by one so that class 0 is not black."""
    ids = np.arange(1, num_classes + 1)
    colours = np.zeros((num_classes, 3), np.uint8)
    for shift in range(8):
        for c in range(3):
            colours[:, c] |= (((ids >> (3 * shift + c)) & 1) << (7 - shift)).astype(np.uint8)
    return colours


def colorize(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """An ``[H, W]`` label map as an RGB image."""
    return palette(max(num_classes, int(labels.max()) + 1))[labels]


@cache
def ade20k_classes() -> tuple[str, ...]:
    """The 150 ADE20K class names in training-id order."""
    text = (Path(__file__).with_name("ade20k_classes.txt")).read_text()
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def sample_image_path() -> Path:
    """A real street photograph that scikit-image ships (no download)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise ImageError("the sample photograph comes with scikit-image: pip install scikit-image")
    return Path(spec.origin).parent / "data" / "motorcycle_left.png"
