"""ppmseg's image reader (``model.image.read_image``) against OpenCV's
``cv2.imread(path, cv2.IMREAD_COLOR)`` (BGR turned to RGB): PaddleSeg's eval transforms read
images that way, so it is what the official model saw. Every file is written here with Pillow,
NumPy or a few hand-made bytes, from scikit-image's bundled photographs or random samples.

Measured with opencv-python-headless 5.0.0.93 (what tests/reference/requirements.txt installs for
PaddleSeg) and 4.14.0.94, and Pillow 13.0.0, every case decodes to equal arrays except those in
``BOUNDED``, each with its reason. Notably:

* JPEG (baseline, progressive, 4:4:4 / 4:2:2 / 4:2:0, grey, CMYK, real camera files) is equal.
  JPEG decoders may differ (IDCT method, chroma upsampling, library version), but both wheels
  bundle libjpeg-turbo (Pillow 3.2.0, OpenCV 3.1.2) and decode with its defaults, the accurate
  integer IDCT and fancy upsampling, which give the same bits (OpenCV 4.6's libjpeg-turbo 2.1.2
  too). Were a new build to differ, the difference would show here: bound it in ``BOUNDED`` with
  the measured max and mean and why.
* CMYK is equal only because read_image repeats OpenCV's arithmetic (see ``_cmyk_jpeg`` and
  ``_cmyk_tiff`` in model/image.py); Pillow's own conversion is 1 level off.
* 16-bit RGB(A) TIFF is 1-2 levels off (``BOUNDED``); 16-bit PNG, grey or colour, is equal.
* TIFF with orientations 5 to 8 does not load in OpenCV 4.14 and 5.0 (imread fails on an internal
  assertion and returns None); ppmseg turns it upright like the other formats.
* Older OpenCV differs on its own: 4.6 (PaddleSeg 2.8's declared limit) ignores WebP's EXIF
  orientation and cannot read GIF; everything else above holds for it too.
"""

from __future__ import annotations

import io
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
GREY = data.camera()[::5, ::3]
SAMPLES = RNG.integers(0, 256, (37, 53, 4), dtype=np.uint8)  # every value, with alpha or K; no symmetry
SAMPLES16 = RNG.integers(0, 65536, (37, 53, 4), dtype=np.uint16)
ALPHA = SAMPLES[..., 3]
ALPHA_TABLE = bytes(ALPHA.ravel()[:64].tolist())  # alpha of each of a 64-colour palette


# --- files Pillow cannot write, and a JPEG with EXIF added without re-encoding ---

def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def raw_png(path: Path, samples: np.ndarray) -> Path:
    """A 16-bit PNG of ``[H, W, C]`` uint16 samples, C = 1 to 4 (Pillow has no 16-bit colour mode)."""
    h, w, c = samples.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in samples)
    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(rows))
                     + _png_chunk(b"IEND", b""))
    return path


def raw_tiff(path: Path, samples: np.ndarray, extra_samples: int | None = None) -> Path:
    """An uncompressed little-endian RGB(A) TIFF of ``[H, W, 3 or 4]`` uint8 or uint16 samples in one
    strip, with what Pillow cannot write: 16-bit colour, ExtraSamples 0 (unspecified) or 1 (associated
    alpha). Pillow writes 2 (unassociated) itself."""
    h, w, c = samples.shape
    pixels = samples.astype(f"<u{samples.itemsize}").tobytes()
    short, long = 3, 4
    n_tags = 10 + (extra_samples is not None)
    bits_at = 8 + 2 + 12 * n_tags + 4  # after the only directory: BitsPerSample's c values, then the pixels
    strip_at = bits_at + 2 * c
    tags = [(256, short, 1, w), (257, short, 1, h), (258, short, c, bits_at), (259, short, 1, 1),
            (262, short, 1, 2), (273, long, 1, strip_at), (277, short, 1, c), (278, short, 1, h),
            (279, long, 1, len(pixels)), (284, short, 1, 1)]
    if extra_samples is not None:
        tags.append((338, short, 1, extra_samples))
    # A value that fits sits in the entry itself (a little-endian short in its first two bytes).
    directory = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", *t) for t in tags) + b"\0" * 4
    bits = struct.pack(f"<{c}H", *[8 * samples.itemsize] * c)
    path.write_bytes(b"II*\0" + struct.pack("<I", 8) + directory + bits + pixels)
    return path


def exif(orientation: int) -> Image.Exif:
    e = Image.Exif()
    e[0x0112] = orientation
    return e


def with_exif(jpeg: bytes, exif_block: bytes) -> bytes:
    """A JPEG file's bytes with an APP1 EXIF segment added after SOI/APP0, pixels untouched."""
    at = 2 + (2 + struct.unpack(">H", jpeg[4:6])[0] if jpeg[2:4] == b"\xff\xe0" else 0)
    return jpeg[:at] + b"\xff\xe1" + struct.pack(">H", len(exif_block) + 2) + exif_block + jpeg[at:]


def without_adobe_marker(jpeg: bytes) -> bytes:
    """A JPEG's bytes with its APP14 Adobe segment (colour transform, CMYK inversion) removed."""
    at = jpeg.index(b"\xff\xee")
    return jpeg[:at] + jpeg[at + 2 + struct.unpack(">H", jpeg[at + 2:at + 4])[0]:]


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


def cmyk_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(SAMPLES, "CMYK").save(buf, "JPEG", quality=95)
    return buf.getvalue()


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
# Associated alpha as a real file holds it: colour already multiplied by alpha, so never above it.
PREMULTIPLIED = np.dstack([SAMPLES[..., :3] * (ALPHA[..., None] / 255.0), ALPHA]).round().astype(np.uint8)

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
    # PNG
    "png-rgb": save(PHOTO, "rgb.png"),
    "png-grey": save(GREY, "grey.png"),
    "png-grey-alpha": save(np.dstack([GREY, GREY[::-1]]), "la.png", "LA"),
    "png-grey-alpha-random": save(SAMPLES[..., [0, 3]], "la-random.png", "LA"),
    "png-palette": save_image(lambda: Image.fromarray(PHOTO).quantize(64), "p.png"),
    "png-palette-transparent-index": save_image(lambda: Image.fromarray(PHOTO).quantize(64), "pt.png",
                                                transparency=5),
    "png-palette-alpha-table": save_image(lambda: Image.fromarray(PHOTO).quantize(64), "pa.png",
                                          transparency=ALPHA_TABLE),
    "png-1-bit": save_image(lambda: Image.fromarray(GREY).convert("1"), "bw.png"),
    "png-rgba": save(SAMPLES, "rgba.png"),
    "png-grey-16": save(SAMPLES16[..., 0], "grey16.png"),
    "png-grey-alpha-16": lambda d: raw_png(d / "la16.png", SAMPLES16[..., :2]),
    "png-rgb-16": lambda d: raw_png(d / "rgb16.png", SAMPLES16[..., :3]),
    "png-rgba-16": lambda d: raw_png(d / "rgba16.png", SAMPLES16),
    # JPEG
    "jpeg-baseline-420": save(PHOTO, "b420.jpg", quality=90),
    "jpeg-baseline-422": save(PHOTO, "b422.jpg", quality=90, subsampling=1),
    "jpeg-baseline-444": save(PHOTO, "b444.jpg", quality=90, subsampling=0),
    "jpeg-low-quality": save(PHOTO, "q20.jpg", quality=20),
    "jpeg-progressive": save(PHOTO, "prog.jpg", quality=90, progressive=True),
    "jpeg-progressive-optimized": save(PHOTO, "prog-opt.jpg", quality=75, progressive=True, optimize=True),
    "jpeg-grey": save(GREY, "grey.jpg", quality=90),
    "jpeg-cmyk": write_bytes(cmyk_jpeg, "cmyk.jpg"),
    "jpeg-cmyk-photo": save_image(lambda: Image.fromarray(PHOTO).convert("CMYK"), "cmyk-photo.jpg", quality=90),
    "jpeg-cmyk-no-adobe-marker": write_bytes(lambda: without_adobe_marker(cmyk_jpeg()), "cmyk-noadobe.jpg"),
    **{f"camera-jpeg-{n}": write_bytes(lambda n=n: skimage_file(f"{n}.jpg").read_bytes(), f"{n}.jpg")
       for n in ("rocket", "retina", "hubble_deep_field")},
    # BMP
    "bmp-rgb": save(PHOTO, "rgb.bmp"),
    "bmp-grey": save(GREY, "grey.bmp"),
    "bmp-palette": save_image(lambda: Image.fromarray(PHOTO).quantize(16), "p.bmp"),
    "bmp-rgba": save(SAMPLES, "rgba.bmp"),
    # WebP
    "webp-lossy": save(PHOTO, "lossy.webp", quality=80),
    "webp-lossless": save(PHOTO, "lossless.webp", lossless=True),
    "webp-rgba": save(SAMPLES, "rgba.webp", lossless=True),
    "webp-rgba-lossy": save(SAMPLES, "rgba-lossy.webp", quality=80),
    # TIFF
    "tiff-rgb": save(PHOTO, "rgb.tif"),
    "tiff-rgb-lzw": save(PHOTO, "lzw.tif", compression="tiff_lzw"),
    "tiff-rgb-deflate": save(PHOTO, "deflate.tif", compression="tiff_adobe_deflate"),
    "tiff-rgb-jpeg": save(PHOTO, "jpeg.tif", compression="jpeg"),
    "tiff-grey": save(GREY, "grey.tif"),
    "tiff-grey-16": save(SAMPLES16[..., 0], "grey16.tif"),
    "tiff-palette": save_image(lambda: Image.fromarray(PHOTO).quantize(16), "p.tif"),
    "tiff-1-bit": save_image(lambda: Image.fromarray(GREY).convert("1"), "bw.tif"),
    "tiff-grey-alpha": save(SAMPLES[..., [0, 3]], "la.tif", "LA"),
    "tiff-cmyk": save(SAMPLES, "cmyk.tif", "CMYK"),
    "tiff-rgba-unassociated": save(SAMPLES, "rgba.tif"),
    "tiff-rgba-associated": lambda d: raw_tiff(d / "rgba-assoc.tif", PREMULTIPLIED, extra_samples=1),
    "tiff-rgba-unspecified-extra": lambda d: raw_tiff(d / "rgba-extra0.tif", SAMPLES, extra_samples=0),
    "tiff-rgb-16": lambda d: raw_tiff(d / "rgb16.tif", SAMPLES16[..., :3]),
    "tiff-rgba-16": lambda d: raw_tiff(d / "rgba16.tif", SAMPLES16, extra_samples=2),
    # GIF
    "gif": save(PHOTO, "photo.gif"),
}

# Cases that may differ: (max absolute difference, max mean absolute difference, why).
BOUNDED: dict[str, tuple[int, float, str]] = {
    "tiff-rgb-16": (1, 0.5, "OpenCV reads 16-bit TIFF through libtiff's RGBA interface, which rounds to 8 bits "
                            "(v / 257); Pillow keeps the high byte (v >> 8) and has no 16-bit colour mode to do "
                            "better"),
    "tiff-rgba-16": (2, 0.5, "the 16-bit rounding above, then alpha premultiplied on the rounded samples"),
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
    max_diff, mean_diff = difference(ours, theirs)
    bound_max, bound_mean, _why = BOUNDED.get(case, (0, 0.0, "equal"))
    assert max_diff <= bound_max and mean_diff <= bound_mean, (max_diff, mean_diff)


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
    from pipeline.common.inputs import load_input

    rocket = skimage_file("rocket.jpg")
    path = tmp_path / "portrait.jpg"
    path.write_bytes(with_exif(rocket.read_bytes(), exif(6).tobytes()))
    stored = read_image(rocket)
    assert stored.shape[:2] == (427, 640)
    assert np.array_equal(read_image(path), np.rot90(stored, -1))
    assert load_input(path, (0.5,) * 3, (0.5,) * 3).original_size == (640, 427)


def test_differences_are_bounded_only_where_measured():
    """Every bounded case exists and explains itself; everything else must be equal."""
    assert set(BOUNDED) <= set(CASES)
    assert all(why for _m, _a, why in BOUNDED.values())
