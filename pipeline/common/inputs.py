"""The two kinds of input every command takes: an image file, or an already
normalized float32 NCHW tensor in a ``.npy`` file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.image import ImageError, check_input_size, eval_size, normalize_image, read_image


@dataclass
class ModelInput:
    tensor: torch.Tensor  # [1, 3, h, w] float32, normalized
    image: np.ndarray | None  # the original uint8 RGB image, when the input was one

    @property
    def original_size(self) -> tuple[int, int]:
        src = self.image if self.image is not None else self.tensor[0, 0]
        return tuple(src.shape[:2])


def parse_size(text: str) -> tuple[int, int]:
    """``"HxW"`` (for example ``512x1024``: 512 rows, 1024 columns), each side within
    ``MIN_INPUT_SIDE`` to ``MAX_INPUT_SIDE``."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"input size {text!r} is not HxW with positive integers, e.g. 512x512")
    return check_input_size(int(parts[0]), int(parts[1]))


def load_tensor(path: Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """A normalized ``[1, 3, H, W]`` float32 tensor from ``.npy``."""
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":  # else np.load talks about pickles
            raise ImageError(f"{path}: not a .npy file")
    try:
        # Memory-mapped: dtype and shape are checked from the header before any data is read.
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        kind = "truncated" if "greater than file size" in str(e) else "not a readable .npy array"
        raise ImageError(f"{path}: {kind} ({e})") from None
    if array.dtype != np.float32 or array.ndim != 4 or array.shape[:2] != (1, 3):
        layout = " (NHWC? the layout is NCHW)" if array.ndim == 4 and array.shape[-1] == 3 else ""
        raise ImageError(f"{path}: expected a float32 [1, 3, H, W] tensor, got {array.dtype} "
                         f"{list(array.shape)}{layout}")
    if size is None:
        check_input_size(*array.shape[2:], what=f"{path}: spatial size")
    elif array.shape[2:] != tuple(size):
        raise ImageError(f"{path}: expected spatial size {size[0]}x{size[1]}, got {array.shape[2]}x{array.shape[3]}")
    array = np.array(array, order="C")  # into memory, C-contiguous and writable
    if not np.isfinite(array).all():
        raise ImageError(f"{path}: tensor contains NaN or infinite values")
    return torch.from_numpy(array)


def load_input(path: str | Path, mean: tuple[float, ...], std: tuple[float, ...],
               size: tuple[int, int] | None = None) -> ModelInput:
    """An image (PaddleSeg eval transforms; resized to ``size`` if given, else to
    PaddleSeg's eval size) or a ``.npy`` tensor (which must have ``size`` if given)."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    if path.suffix.lower() == ".npy":
        return ModelInput(load_tensor(path, size), None)
    image = read_image(path)
    try:
        target = size or eval_size(*image.shape[:2])
    except ImageError as e:
        raise ImageError(f"{path}: {e}") from None
    return ModelInput(normalize_image(image, target, mean, std), image)
