"""Every photo at its own shape: a library with an entry per input size (``--input-size phone``),
the runtime placing each image in the entry nearest its aspect ratio, and PaddleSeg's eval
protocol (the photo's own eval size) reproduced where today's single-shape path squashes the
photo to a square."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.image import eval_size, normalize_image, read_image, resize_labels
from pipeline.common.shapes import CAMERA_FRAMES, MAX_ENTRIES, NAMED_SETS, nearest_entry, parse_sizes, placement
from tests.conftest import run_cli


def test_the_phone_set_is_the_eval_size_of_camera_frames():
    """Square, 4:3 and 16:9, landscape and portrait, short side 512, as PaddleSeg's eval
    resize makes them; a list keeps its order, the first size the default."""
    assert NAMED_SETS["phone"] == ((512, 512), (512, 704), (704, 512), (512, 928), (928, 512))
    assert [eval_size(*frame) for frame in CAMERA_FRAMES] == list(NAMED_SETS["phone"])
    assert parse_sizes("Phone") == NAMED_SETS["phone"]
    assert parse_sizes("512x704, 512x512") == ((512, 704), (512, 512))
    assert parse_sizes("500x333") == ((500, 333),)  # one size: any sides, as before


@pytest.mark.parametrize(("height", "width", "entry", "placed"), [
    (3024, 4032, (512, 704), (512, 704)),  # 4:3 fills its entry: the eval size
    (1920, 1080, (928, 512), (928, 512)),  # 16:9 portrait
    (2000, 3000, (512, 704), (480, 704)),  # 3:2: nearest 4:3, padded below
    (300, 2000, (512, 928), (160, 928)),   # a panorama: the widest entry, padded
    (40, 40, (512, 512), (512, 512)),      # a small square is scaled up
])
def test_each_image_goes_to_the_entry_nearest_its_ratio(height, width, entry, placed):
    entries = NAMED_SETS["phone"]
    assert entries[nearest_entry(height, width, entries)] == entry
    assert placement(height, width, entry) == placed


@pytest.mark.parametrize(("sizes", "message"), [
    ("512x512,512x500", "input size 512x500: with several sizes every side is a multiple of 32"),
    ("512x512,512x704,512x512", "input size 512x512 is given twice"),
    (",".join(f"512x{32 * k}" for k in range(16, 16 + MAX_ENTRIES + 1)), f"{MAX_ENTRIES + 1} input sizes; at most"),
    ("512x512,x", "input size 'x' is not HxW"),
])
def test_a_bad_size_list_is_a_one_line_error_before_any_work(tmp_path, sizes, message):
    out = tmp_path / "lib"
    proc = run_cli("compile", "--input-size", sizes, "-o", str(out), check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not out.exists()


def test_several_sizes_need_the_torch_frontend(tmp_path):
    proc = run_cli("compile", "--input-size", "phone", "--frontend", "onnx", "-o", str(tmp_path / "lib"), check=False)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "Error: several input sizes need the torch frontend (--frontend torch)"
    assert not (tmp_path / "lib").exists()


@pytest.fixture(scope="module")
def phone_library(tmp_path_factory) -> Path:
    """Tiny (the fixed random initialization) with the ``phone`` set, untuned, for this machine."""
    out = tmp_path_factory.mktemp("phone") / "lib"
    run_cli("compile", "--model", "tiny", "--input-size", "phone", "-o", str(out))
    return out


def _skimage(name: str) -> np.ndarray:
    from skimage import data

    return getattr(data, name)()


def _exif_rotated(image: np.ndarray, path: Path) -> np.ndarray:
    """``image`` saved as a camera held sideways saves it (pixels turned a quarter, EXIF
    orientation 6 to turn them back) and read back upright."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(image))).save(path, exif=exif.tobytes())
    upright = read_image(path)
    assert np.array_equal(upright, image)
    return upright


def photos(directory: Path) -> dict[str, np.ndarray]:
    """Photographs cropped to the camera ratios (rows x columns): landscape and portrait 4:3
    and 16:9, one of them EXIF-rotated."""
    coffee, astronaut = _skimage("coffee"), _skimage("astronaut")
    return {
        "coffee 4:3 landscape": coffee[:, 33:566],  # 400x533
        "astronaut 4:3 portrait": astronaut[:, 64:448],  # 512x384
        "coffee 16:9 landscape": coffee[30:367],  # 337x600
        "astronaut 16:9 portrait": astronaut[:, 112:400],  # 512x288
        "coffee 4:3 portrait, EXIF-rotated": _exif_rotated(np.ascontiguousarray(np.rot90(coffee[:, 33:566])),
                                                           directory / "sideways.png"),
    }


def _reference(meta: dict, image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's label map for ``image`` resized to ``size``, and where it has a near-tie,
    both at the image's own size."""
    from pipeline.deploy.remote import TIE, host_reference

    labels, margin = host_reference(meta, normalize_image(image, size, meta["mean"], meta["std"]).numpy())
    shape = image.shape[:2]
    return resize_labels(labels, shape), resize_labels((margin < TIE).astype(np.int32), shape).astype(bool)


def test_each_photo_runs_at_its_paddleseg_eval_size(phone_library, tmp_path):
    """On 4:3 and 16:9 photographs, portrait and landscape, the library's label map is
    PyTorch's at the photo's PaddleSeg eval size (outside ties); today's single-shape path
    (the photo squashed to 512x512, run here through the library's default entry) gets a
    share of the pixels wrong on every one of them."""
    from pipeline.deploy.runtime import load

    seg = load(phone_library)
    meta = json.loads((phone_library / "meta.json").read_text())
    assert [e["input_shape"][2:] for e in meta["entries"]] == [list(s) for s in NAMED_SETS["phone"]]
    wrong_when_squashed = {}
    for name, image in photos(tmp_path).items():
        size = eval_size(*image.shape[:2])
        assert seg.entry_for(*image.shape[:2]).size == size, name
        want, ties = _reference(meta, image, size)
        got = seg(image)
        assert got.shape == image.shape[:2]
        assert np.array_equal(got[~ties], want[~ties]), f"{name}: {(got != want)[~ties].sum()} pixels differ"
        squashed = resize_labels(seg(normalize_image(image, (512, 512), seg.mean, seg.std).numpy()), image.shape[:2])
        wrong_when_squashed[name] = int((squashed != want)[~ties].sum())
    print("pixels today's squashed path gets wrong:", wrong_when_squashed)
    assert all(n > 0 for n in wrong_when_squashed.values()), wrong_when_squashed


def test_an_image_of_no_entry_ratio_is_padded_and_cropped(phone_library):
    """A 3:2 photo and a panorama have no entry of their own: each is resized into the nearest
    entry keeping its ratio, zero-padded below and to the right, and the padding cropped off
    the label map, which equals PyTorch run on that same padded input."""
    from pipeline.common.shapes import letterbox
    from pipeline.deploy.remote import TIE, host_reference
    from pipeline.deploy.runtime import load

    seg = load(phone_library)
    meta = json.loads((phone_library / "meta.json").read_text())
    for image in (_skimage("coffee"), _skimage("coffee")[:120]):  # 400x600 (3:2), 120x600 (5:1)
        entry = seg.entry_for(*image.shape[:2])
        x, (h, w) = letterbox(image, entry.size, seg.mean, seg.std)
        assert (h, w) != entry.size and not x[..., h:, :].any() and not x[..., w:].any()
        labels, margin = host_reference(meta, x)
        shape = image.shape[:2]
        want = resize_labels(labels[:h, :w], shape)
        ties = resize_labels((margin[:h, :w] < TIE).astype(np.int32), shape).astype(bool)
        got = seg(image)
        assert np.array_equal(got[~ties], want[~ties])


def test_segment_reports_the_entry_each_image_ran_in(phone_library, tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    for name, crop in (("wide", (slice(30, 367), slice(None))), ("tall", (slice(None), slice(64, 448)))):
        Image.fromarray(_skimage("coffee" if name == "wide" else "astronaut")[crop]).save(images / f"{name}.png")
    proc = run_cli("segment", str(images), "--artifact", str(phone_library), "-o", str(tmp_path / "out"),
                   "--verbose")
    assert "tall.png: 512x384 in the 704x512 entry" in proc.stdout
    assert "wide.png: 337x600 in the 512x928 entry" in proc.stdout


def test_the_native_runner_places_each_image_as_the_python_runtime_does(phone_library, tmp_path):
    """``ppmseg-run`` on the ``phone`` library: the same entry for each image and the same
    label map as the Python runtime, one image at a time and a folder at once (padded ratios
    and an odd-sized image included)."""
    import subprocess

    from pipeline.deploy.native import build_runner
    from pipeline.deploy.runtime import load

    runner = build_runner(tmp_path / "ppmseg-run")
    seg = load(phone_library)
    coffee = _skimage("coffee")
    images = {**photos(tmp_path), "coffee 3:2": coffee, "coffee 5:1": coffee[:120],
              "astronaut odd": _skimage("astronaut")[::3, ::5]}
    folder, out = tmp_path / "ppm", tmp_path / "out"
    folder.mkdir()
    for i, image in enumerate(images.values()):
        Image.fromarray(image).save(folder / f"{i}.ppm")

    def run(*args: object) -> str:
        proc = subprocess.run([str(runner), str(phone_library), *map(str, args), "-v"], capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    printed = run("--input", folder, "-o", out)
    single = run("--input", folder / "0.ppm", "-o", tmp_path / "one.pgm")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "one.pgm")), np.asarray(Image.open(out / "0.pgm")))
    for i, (name, image) in enumerate(images.items()):
        h, w = seg.entry_for(*image.shape[:2]).size
        assert f"{i}.ppm: {image.shape[0]}x{image.shape[1]} in the {h}x{w} entry" in printed, name
        assert np.array_equal(np.asarray(Image.open(out / f"{i}.pgm")).astype(np.int32), seg(image)), name
    assert f"in the {seg.entry_for(*images['coffee 4:3 landscape'].shape[:2]).size[0]}x" in single


def test_evaluate_with_a_phone_library_scores_as_pytorch_at_each_eval_size(phone_library, tmp_path):
    """``ppmseg evaluate --artifact`` on a small ADE20K-layout set of 4:3 and 16:9 photographs:
    the ``phone`` library scores as the PyTorch model with VIM at each image's eval size (its
    twin), and agrees with PaddleSeg's protocol (all logits bilinear to the image) on nearly
    every pixel, against masks that are that protocol's own prediction."""
    from model.weights import load_model
    from pipeline.evaluate.predictors import pytorch_predictor

    root = tmp_path / "ADEChallengeData2016"
    for part in ("images", "annotations"):
        (root / part / "validation").mkdir(parents=True)
    coffee, astronaut = _skimage("coffee"), _skimage("astronaut")
    paddleseg = pytorch_predictor(load_model("tiny", None, output="logits"))
    for i, crop in enumerate((coffee[:, 33:566], astronaut[:, 112:400], coffee[30:367])):
        small = Image.fromarray(crop).resize((crop.shape[1] // 4, crop.shape[0] // 4), Image.BILINEAR)
        stem = f"ADE_val_{i + 1:08d}"
        small.save(root / "images" / "validation" / f"{stem}.jpg", quality=95)
        image = read_image(root / "images" / "validation" / f"{stem}.jpg")  # the decoded JPEG, as evaluate sees it
        mask = (paddleseg(image) + 1).astype(np.uint8)
        mask[:4] = 0  # ignored
        Image.fromarray(mask).save(root / "annotations" / "validation" / f"{stem}.png")

    def evaluate(*args: str) -> dict:
        out = tmp_path / f"{len(list(tmp_path.glob('*.json')))}.json"
        run_cli("evaluate", *args, "--dataset", str(root), "-o", str(out))
        return json.loads(out.read_text())

    art = evaluate("--artifact", str(phone_library))
    twin = evaluate("--model", "tiny", "--mode", "vim")
    protocol = evaluate("--model", "tiny")
    assert protocol["pixel_accuracy"] == 1.0  # the masks are its prediction
    moved = sum(abs(x[k] - y[k]) for x, y in zip(twin["per_class"], art["per_class"], strict=True)
                for k in ("predicted", "intersection"))
    assert art["pixels"] == twin["pixels"] and moved <= 0.01 * art["pixels"]
    assert art["miou"] == pytest.approx(twin["miou"], rel=0.05)
    # VIM and nearest-neighbour against all logits bilinear: the same pixels but at class
    # boundaries (99.4% here; the random weights' few small classes make mIoU swing more).
    assert art["pixel_accuracy"] > 0.98
