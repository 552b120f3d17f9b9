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


def _linear_axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Half-pixel bilinear taps along one axis, in float32 with one rounding per
    operation (the native runner does the same arithmetic, so both agree bit for bit)."""
    scale = np.float32(n_in) / np.float32(n_out)
    src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    l1 = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1))
    return i0, np.minimum(i0 + 1, n_in - 1), np.float32(1) - l1, l1


def resize_bilinear(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float32 ``[H, W, C]`` to ``size`` (h, w): OpenCV's INTER_LINEAR (half-pixel
    centres, no antialiasing), the resize of PaddleSeg's eval transforms."""
    y0, y1, hl0, hl1 = _linear_axis(image.shape[0], size[0])
    x0, x1, wl0, wl1 = _linear_axis(image.shape[1], size[1])
    wl0, wl1 = wl0[None, :, None], wl1[None, :, None]
    top = image[y0][:, x0] * wl0 + image[y0][:, x1] * wl1
    bottom = image[y1][:, x0] * wl0 + image[y1][:, x1] * wl1
    return top * hl0[:, None, None] + bottom * hl1[:, None, None]


def normalize_image(image: np.ndarray, size: tuple[int, int], mean: tuple[float, ...],
                    std: tuple[float, ...]) -> torch.Tensor:
    """uint8 RGB ``[H, W, 3]`` to the model's float32 ``[1, 3, h, w]`` input, like
    PaddleSeg: resize the float image (``resize_bilinear``), scale to [0, 1], standardize."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ImageError(f"expected a uint8 RGB image [H, W, 3], got {image.dtype} {list(image.shape)}")
    x = image.astype(np.float32)
    if x.shape[:2] != tuple(size):
        x = resize_bilinear(x, size)
    x = (x / np.float32(255) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None]))


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
