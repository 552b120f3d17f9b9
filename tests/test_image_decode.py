"""ppmseg's image reader (``model.image.read_image``) against OpenCV's
``cv2.imread(path, cv2.IMREAD_COLOR)`` (BGR turned to RGB): PaddleSeg's eval transforms read
images that way, so it is what the official model saw. Every file is written here with Pillow,
NumPy or a few hand-made bytes, from scikit-image's bundled photographs.

EXIF orientation: OpenCV turns JPEG, PNG (eXIf) and WebP images upright by the EXIF Orientation
tag and ignores XMP and PNG text profiles; ppmseg does the same. TIFF with orientations 5 to 8
does not load in OpenCV 4.14 and 5.0 (imread fails on an internal assertion and returns None);
ppmseg turns it upright like the other formats.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2  # opencv-python-headless, a dev dependency
import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from skimage import data

from model.image import read_image

RNG = np.random.default_rng(15)
PHOTO = data.astronaut()[::5, ::3]  # 103x171: odd sides exercise the chroma upsampling edges
SAMPLES = RNG.integers(0, 256, (37, 53, 4), dtype=np.uint8)  # no symmetry: any wrong turn shows


# --- a JPEG with EXIF added without re-encoding, and other writers ---

def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def exif(orientation: int) -> Image.Exif:
    e = Image.Exif()
    e[0x0112] = orientation
    return e


def with_exif(jpeg: bytes, exif_block: bytes) -> bytes:
    """A JPEG file's bytes with an APP1 EXIF segment added after SOI/APP0, pixels untouched."""
    at = 2 + (2 + struct.unpack(">H", jpeg[4:6])[0] if jpeg[2:4] == b"\xff\xe0" else 0)
    return jpeg[:at] + b"\xff\xe1" + struct.pack(">H", len(exif_block) + 2) + exif_block + jpeg[at:]


def skimage_file(name: str) -> Path:
    return Path(data.__file__).parent / name


# --- the cases: a writer of one file into a directory ---

def save(array: np.ndarray, name: str, mode: str | None = None, **kw) -> Callable[[Path], Path]:
    def write(d: Path) -> Path:
        Image.fromarray(array, mode).save(d / name, **kw)
        return d / name
    return write


def save_image(make: Callable[[], Image.Image], name: str, **kw) -> Callable[[Path], Path]:
    def write(d: Path) -> Path:
        make().save(d / name, **kw)
        return d / name
    return write


def write_bytes(make: Callable[[], bytes], name: str) -> Callable[[Path], Path]:
    def write(d: Path) -> Path:
        (d / name).write_bytes(make())
        return d / name
    return write


def png_with_text_exif(d: Path) -> Path:
    """Orientation 6 only in ImageMagick's "Raw profile type exif" text chunk: Pillow's getexif()
    reads it, OpenCV does not, so the image stays as stored."""
    hexed = (exif(6).tobytes()).hex()
    info = PngImagePlugin.PngInfo()
    info.add_text("Raw profile type exif", f"\nexif\n{len(hexed) // 2:8d}\n{hexed}\n", zip=True)
    Image.fromarray(PHOTO).save(d / "text-exif.png", pnginfo=info)
    return d / "text-exif.png"


def png_exif_after_pixels(d: Path) -> Path:
    """An eXIf chunk after the image data (allowed by the PNG spec): both readers still apply it."""
    Image.fromarray(PHOTO).save(d / "late.png")
    png = (d / "late.png").read_bytes()
    end = png.rindex(b"IEND") - 4
    (d / "late.png").write_bytes(png[:end] + _png_chunk(b"eXIf", exif(6).tobytes()[6:]) + png[end:])
    return d / "late.png"


XMP_ORIENTATION_6 = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-'
                     b'syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/>'
                     b'</rdf:RDF></x:xmpmeta>')

CASES: dict[str, Callable[[Path], Path]] = {
    # EXIF orientation, every value, on a photograph in the formats that carry EXIF
    **{f"jpeg-orientation-{o}": save(PHOTO, f"o{o}.jpg", exif=exif(o), quality=92) for o in range(1, 9)},
    **{f"png-orientation-{o}": save(PHOTO, f"o{o}.png", exif=exif(o)) for o in range(1, 9)},
    **{f"webp-orientation-{o}": save(PHOTO, f"o{o}.webp", exif=exif(o), lossless=True) for o in (3, 6, 8)},
    **{f"tiff-orientation-{o}": save(PHOTO, f"o{o}.tif", exif=exif(o)) for o in range(1, 5)},
    "mpo-orientation-6": save_image(lambda: Image.fromarray(PHOTO), "o6.mpo", save_all=True, exif=exif(6),
                                    append_images=[Image.fromarray(PHOTO[::-1])]),
    "camera-jpeg-orientation-6": write_bytes(lambda: with_exif(skimage_file("rocket.jpg").read_bytes(),
                                                               exif(6).tobytes()), "rocket-o6.jpg"),
    "png-exif-after-pixels": png_exif_after_pixels,
    # orientations OpenCV does not take: XMP, a PNG text profile, values out of range, a broken block
    "jpeg-xmp-orientation-only": save(PHOTO, "xmp.jpg", xmp=XMP_ORIENTATION_6),
    "png-text-profile-orientation": png_with_text_exif,
    **{f"jpeg-orientation-{o}-invalid": save(PHOTO, f"bad{o}.jpg", exif=exif(o)) for o in (0, 9, 65535)},
    "jpeg-broken-exif": save(PHOTO, "broken.jpg", exif=b"Exif\0\0II*\0\xff\xff\xff\x7fgarbage"),
}


def opencv_rgb(path: Path) -> np.ndarray | None:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if bgr is None else np.ascontiguousarray(bgr[..., ::-1])


def difference(ours: np.ndarray, theirs: np.ndarray) -> tuple[int, float]:
    """(max, mean) absolute difference of two equally shaped uint8 images."""
    diff = np.abs(ours.astype(np.int16) - theirs.astype(np.int16))
    return int(diff.max()), float(diff.mean())


@pytest.mark.parametrize("case", list(CASES))
def test_decoding_matches_opencv(case, tmp_path):
    path = CASES[case](tmp_path)
    theirs, ours = opencv_rgb(path), read_image(path)
    assert theirs is not None, f"OpenCV cannot read {path.name}"
    assert ours.dtype == np.uint8 and ours.flags.c_contiguous
    assert ours.shape == theirs.shape
    assert difference(ours, theirs) == (0, 0.0)


# --- orientation by the EXIF specification, independently of OpenCV ---

def displayed(stored: np.ndarray, orientation: int) -> np.ndarray:
    """The EXIF 2.3 meaning of Orientation, as where the stored first row and column are shown."""
    return {1: stored, 2: np.fliplr(stored), 3: np.rot90(stored, 2), 4: np.flipud(stored),
            5: np.rot90(np.fliplr(stored), 1),  # first row on the left, first column on top
            6: np.rot90(stored, -1),  # first row on the right, first column on top: turned clockwise
            7: np.rot90(np.fliplr(stored), -1),  # first row on the right, first column at the bottom
            8: np.rot90(stored, 1)}[orientation]  # first row on the left, first column at the bottom


@pytest.mark.parametrize("suffix", [".png", ".webp", ".tif"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_follows_the_exif_specification(orientation, suffix, tmp_path):
    stored = SAMPLES[:5, :7, :3]
    path = tmp_path / f"o{orientation}{suffix}"
    Image.fromarray(stored).save(path, exif=exif(orientation), **({"lossless": True} if suffix == ".webp" else {}))
    expected = displayed(stored, orientation)
    assert np.array_equal(read_image(path), expected)
    theirs = opencv_rgb(path)
    if theirs is not None:  # OpenCV fails on TIFF orientations 5 to 8 (module docstring)
        assert np.array_equal(theirs, expected)
    else:
        assert suffix == ".tif" and orientation >= 5


def test_a_sideways_phone_photo_gets_the_size_it_is_displayed_at(tmp_path):
    """The issue's case: a camera JPEG stored 640 wide and 427 high and tagged Orientation=6 is the
    portrait it is displayed as, 640 high and 427 wide, for every command (``load_input``: predict,
    segment, run; the label map has that size)."""
    from pipeline.inputs import load_input

    rocket = skimage_file("rocket.jpg")
    path = tmp_path / "portrait.jpg"
    path.write_bytes(with_exif(rocket.read_bytes(), exif(6).tobytes()))
    stored = read_image(rocket)
    assert stored.shape[:2] == (427, 640)
    assert np.array_equal(read_image(path), np.rot90(stored, -1))
    assert load_input(path, (0.5,) * 3, (0.5,) * 3).original_size == (640, 427)
