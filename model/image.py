"""Images in and label maps out: PaddleSeg's eval transforms, the colour palette,
the ADE20K class names and a real photograph shipped inside a PyPI package."""

from __future__ import annotations

import importlib.util
import math
import warnings
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# PaddleSeg's ADE20K eval transform: keep the aspect ratio, fit into 2048x512
# (long x short side), round both sides up to a multiple of 32.
EVAL_TARGET = (2048, 512)
SIZE_DIVISOR = 32
# Model input sides accepted from the user (--input-size, .npy tensors): 32, the smallest side
# the eval resize produces (Tiny needs at least 9 rows for its 1/16 logits), to 8192, four times
# the eval resize's long side (a guard against a mistyped size exhausting memory).
MIN_INPUT_SIDE, MAX_INPUT_SIDE = 32, 8192
# Decompression-bomb guard for image files: Pillow's default limit, made an error (Pillow only
# warns up to twice this). About 9459x9459; the float32 copy of such an image is 1 GB.
MAX_IMAGE_PIXELS = 89_478_485


class ImageError(ValueError):
    """An input that is not a usable image or tensor."""


def read_image(path: str | Path) -> np.ndarray:
    """An image file as uint8 RGB ``[H, W, 3]``, decoded as PaddleSeg's
    ``cv2.imread(path, cv2.IMREAD_COLOR)`` does (the decoding the official model saw):
    upright by the EXIF Orientation tag, grey repeated, alpha dropped (a TIFF's colour
    premultiplied first, as libtiff does), 16-bit samples cut to their high byte, CMYK
    converted with OpenCV's arithmetic. Refuses more than ``MAX_IMAGE_PIXELS`` pixels before
    decoding anything. tests/test_image_decode.py compares it with OpenCV on every format:
    equal, JPEG included (both bundle libjpeg-turbo with the same defaults), but for 16-bit
    colour TIFF (within 2 levels) and TIFF orientations 5 to 8 (which OpenCV 4.14 and 5.0
    fail to read)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    too_big = f"more than {MAX_IMAGE_PIXELS:,} pixels (the decompression-bomb limit); resize it first"
    try:
        # Pillow's warnings (the bomb warning, alpha dropped from a palette) would be stray stderr
        # lines: the size is checked here and dropping alpha is the documented conversion.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                if im.width * im.height > MAX_IMAGE_PIXELS:
                    raise ImageError(f"{path}: {im.width}x{im.height} is {too_big}")
                rgb = _as_rgb(im, path)
                return upright(rgb, exif_orientation(im))
    except ImageError:
        raise
    except Image.DecompressionBombError:  # Pillow's own hard limit, hit while opening
        raise ImageError(f"{path}: {too_big}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: not a readable image ({e})") from None


def _as_rgb(im, path: Path) -> np.ndarray:  # noqa: ANN001 - a PIL image, imported lazily
    """Decode an opened image to uint8 RGB the way OpenCV's 8-bit colour read does."""
    if im.mode.startswith("I;16"):
        # 16-bit grey: OpenCV keeps the high byte; Pillow's convert would clip to 255 (all white).
        grey = (np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if im.mode in ("I", "F"):
        raise ImageError(f"{path}: 32-bit {'float' if im.mode == 'F' else 'integer'} samples are not "
                         "supported; save it as an 8-bit image")
    if im.mode == "CMYK" and im.format in _CMYK_FORMULAS:
        return _CMYK_FORMULAS[im.format](np.asarray(im))
    if im.mode == "RGBA" and im.format == "TIFF" and (alpha := _tiff_alpha(im)) is not None:
        return _tiff_colour(np.asarray(im), associated=alpha == 1)
    return np.asarray(im.convert("RGB"))


def _cmyk_jpeg(cmyk: np.ndarray) -> np.ndarray:
    """OpenCV's JPEG reader: libjpeg's raw samples, which Adobe's convention stores inverted
    (Pillow un-inverts them), through icvCvt_CMYK2BGR: ``k' - ((255 - c') * k' >> 8)``
    with ``c' = 255 - c`` and ``k' = 255 - k``."""
    c, k = cmyk[..., :3].astype(np.int32), 255 - cmyk[..., 3:].astype(np.int32)
    return (k - ((c * k) >> 8)).astype(np.uint8)


def _cmyk_tiff(cmyk: np.ndarray) -> np.ndarray:
    """OpenCV's TIFF reader goes through libtiff's RGBA interface: ``(255 - k) * (255 - c) // 255``
    (Pillow rounds instead of flooring)."""
    c, k = cmyk[..., :3].astype(np.int32), 255 - cmyk[..., 3:].astype(np.int32)
    return (k * (255 - c) // 255).astype(np.uint8)


# Pillow's format name to OpenCV's CMYK conversion; MPO is Pillow's name for a JPEG with an MPF
# segment (extra frames), which many cameras write.
_CMYK_FORMULAS = {"JPEG": _cmyk_jpeg, "MPO": _cmyk_jpeg, "TIFF": _cmyk_tiff}


def _tiff_alpha(im) -> int | None:  # noqa: ANN001 - a PIL TIFF image
    """The TIFF ExtraSamples kind of the alpha channel: 1 associated, 2 unassociated, None otherwise."""
    extra = im.tag_v2.get(338)  # ExtraSamples
    first = extra[0] if isinstance(extra, tuple) and extra else extra
    return first if first in (1, 2) else None


def _tiff_colour(rgba: np.ndarray, associated: bool) -> np.ndarray:
    """The colour OpenCV gives a TIFF with alpha: it reads through libtiff's RGBA interface, which
    premultiplies unassociated alpha (``(v * a + 127) // 255``, its UaToAa table) and passes associated
    (already premultiplied) samples through, then drops alpha. Pillow un-premultiplies associated
    samples with a floor division (``v * 255 // a``); rounding up undoes that exactly when ``v <= a``."""
    rgb, alpha = rgba[..., :3].astype(np.int32), rgba[..., 3:].astype(np.int32)
    return ((rgb * alpha + (254 if associated else 127)) // 255).astype(np.uint8)


ORIENTATION_TAG = 0x0112
# EXIF Orientation to the array operation that shows the picture as intended (OpenCV's imread
# applies it unless IMREAD_IGNORE_ORIENTATION): 1 stored upright, 2 mirrored, 3 rotated 180,
# 4 flipped, 5 transposed, 6 to be turned 90 degrees clockwise, 7 transversed, 8 counter-clockwise.
_UPRIGHT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: a.transpose(1, 0, 2)[:, ::-1],
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: a.transpose(1, 0, 2)[::-1],
}


def exif_orientation(im) -> int:  # noqa: ANN001 - a PIL image, imported lazily
    """The EXIF Orientation tag (1 when absent or invalid) of a decoded PIL image, read from the
    EXIF block only as OpenCV does: Pillow's ``getexif()`` would also take XMP's tiff:Orientation
    and PNG text profiles, which OpenCV ignores. Pillow's TIFF reader turns the pixels itself
    and keeps no EXIF block, so a TIFF gives 1 here. Two of Pillow's own turns remain, unlike
    OpenCV 5.0: a TIFF with only an XMP orientation, and an AVIF's container rotation
    (irot/imir), which Pillow's AVIF reader reports as this tag."""
    from PIL import Image

    data = im.info.get("exif")
    if not data:
        return 1
    exif = Image.Exif()
    try:
        exif.load(data)
        value = exif.get(ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block: OpenCV ignores it and still decodes the pixels
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def upright(image: np.ndarray, orientation: int) -> np.ndarray:
    """An ``[H, W, C]`` image stored with EXIF ``orientation`` turned to how it is displayed."""
    turn = _UPRIGHT.get(orientation)
    return image if turn is None else np.ascontiguousarray(turn(image))


def eval_size(height: int, width: int) -> tuple[int, int]:
    """PaddleSeg's ``Resize(target_size=[2048, 512], keep_ratio=True, size_divisor=32)``."""
    scale = min(max(EVAL_TARGET) / max(height, width), min(EVAL_TARGET) / min(height, width))
    size = tuple(math.ceil(round(s * scale) / SIZE_DIVISOR) * SIZE_DIVISOR for s in (height, width))
    if min(size) == 0:  # PaddleSeg's cv2.resize fails here too
        raise ImageError(f"a {height}x{width} image is too elongated for the eval resize (a side would "
                         "shrink to 0 pixels); give the model input size (--input-size HxW)")
    return size


def check_input_size(height: int, width: int, what: str = "input size") -> tuple[int, int]:
    """Refuse a model input outside ``MIN_INPUT_SIDE`` to ``MAX_INPUT_SIDE`` on either side."""
    if not (MIN_INPUT_SIDE <= height <= MAX_INPUT_SIDE and MIN_INPUT_SIDE <= width <= MAX_INPUT_SIDE):
        raise ImageError(f"{what} {height}x{width} is outside {MIN_INPUT_SIDE} to {MAX_INPUT_SIDE} pixels per side")
    return height, width


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
    image = as_rgb_array(image)
    x = image.astype(np.float32)
    if x.shape[:2] != tuple(size):
        x = resize_bilinear(x, size)
    x = (x / np.float32(255) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None]))


def as_rgb_array(image: np.ndarray) -> np.ndarray:
    """A uint8 image array as RGB ``[H, W, 3]``: grey ``[H, W]`` or ``[H, W, 1]`` is repeated and
    the alpha of ``[H, W, 4]`` dropped, as for image files; anything else is refused."""
    if image.dtype == np.uint8 and image.ndim == 2:
        image = image[:, :, None]
    ok = image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] in (1, 3, 4)
    if not ok or image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageError(f"expected a uint8 RGB image [H, W, 3] (grey [H, W] and RGBA [H, W, 4] are "
                         f"converted), got {image.dtype} {list(image.shape)}")
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return image[:, :, :3]


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
