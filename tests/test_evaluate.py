"""``ppmseg evaluate``: PaddleSeg's metric on hand-made arrays, and end-to-end runs of the
real CLI on a small ADE20K-layout folder built here from scikit-image's photographs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from model.image import ade20k_classes, eval_size, normalize_image, read_image
from model.weights import load_model
from pipeline.evaluate.dataset import DatasetError, list_samples, read_annotation
from pipeline.evaluate.metric import IoUAccumulator
from pipeline.evaluate.predictors import paddleseg_labels
from tests.conftest import run_cli

PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png")  # shipped with scikit-image, no download
IGNORED_ROWS = 6  # top rows of every mask are 0 ("other"), which PaddleSeg ignores
ART_SIZE = (64, 64)


# ---------------------------------------------------------------- metric by hand


def test_metric_matches_hand_computed_values():
    # 3 classes + one never seen; 255 ignored. Pixel by pixel (pred, label):
    # (0,0) (0,1) (1,1) / ignored (2,2) (2,0)
    pred = np.array([[0, 0, 1], [1, 2, 2]])
    label = np.array([[0, 1, 1], [255, 2, 0]], np.uint8)
    acc = IoUAccumulator(num_classes=4)
    acc.update(pred, label)
    assert acc.intersection.tolist() == [1, 1, 1, 0]
    assert acc.predicted.tolist() == [2, 1, 2, 0]  # the ignored pixel's prediction is not counted
    assert acc.labelled.tolist() == [2, 2, 1, 0]
    assert acc.union.tolist() == [3, 2, 2, 0]
    np.testing.assert_allclose(acc.class_iou, [1 / 3, 1 / 2, 1 / 2, 0])
    assert acc.miou == pytest.approx((1 / 3 + 1 / 2 + 1 / 2 + 0) / 4)  # PaddleSeg: empty union counts as 0
    assert acc.miou_present == pytest.approx((1 / 3 + 1 / 2 + 1 / 2) / 3)
    assert acc.pixel_accuracy == pytest.approx(3 / 5)

    # Areas add up over the set (not a mean of per-image scores): class 0 becomes 2 / 4.
    acc.update(np.array([[0]]), np.array([[0]], np.uint8))
    assert acc.class_iou[0] == pytest.approx(2 / 4)
    assert acc.pixel_accuracy == pytest.approx(4 / 6)
    assert acc.images == 2
    d = acc.as_dict(["a", "b", "c", "d"])
    assert d["classes_present"] == 3 and d["pixels"] == 6
    assert d["per_class"][3] == {"id": 3, "name": "d", "iou": 0.0, "intersection": 0, "union": 0, "predicted": 0,
                                 "labelled": 0}


def test_metric_refuses_mismatched_shapes_and_foreign_ids():
    acc = IoUAccumulator(num_classes=3)
    with pytest.raises(ValueError, match="shape"):
        acc.update(np.zeros((2, 2), int), np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError, match="outside"):
        acc.update(np.full((2, 2), 3), np.zeros((2, 2), np.uint8))


def test_annotation_mapping_is_paddleseg_reduce_zero_label(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(np.array([[0, 1, 2], [150, 75, 0]], np.uint8)).save(path)
    assert read_annotation(path).tolist() == [[255, 0, 1], [149, 74, 255]]
    Image.fromarray(np.array([[0, 151]], np.uint8)).save(path)
    with pytest.raises(DatasetError, match="label 151 out of range"):
        read_annotation(path)
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(path)
    with pytest.raises(DatasetError, match="not a single-channel"):
        read_annotation(path)


def test_chunked_paddleseg_argmax_equals_the_plain_one():
    logits = torch.randn(1, 150, 9, 13, generator=torch.Generator().manual_seed(3))
    full = F.interpolate(F.interpolate(logits, (72, 104), mode="bilinear"), (50, 77), mode="bilinear")
    assert np.array_equal(paddleseg_labels(logits, (72, 104), (50, 77)), full.argmax(1)[0].int().numpy())


# ---------------------------------------------------------------- a dataset in ADE20K's layout


def _photo(name: str) -> np.ndarray:
    import skimage

    im = Image.open(Path(skimage.__file__).parent / "data" / name).convert("RGB")
    return np.asarray(im.resize((im.width // 4, im.height // 4), Image.BILINEAR))  # small files, same eval size


def _paddleseg_reference(model, image: np.ndarray) -> np.ndarray:
    """PaddleSeg's val.py written out plainly: logits to the model input size, to the image size, argmax."""
    size = eval_size(*image.shape[:2])
    with torch.inference_mode():
        logits = model(normalize_image(image, size, model.cfg.mean, model.cfg.std))
        full = F.interpolate(F.interpolate(logits, size, mode="bilinear"), image.shape[:2], mode="bilinear")
    return full.argmax(1)[0].int().numpy()


def _naive_scores(preds: list[np.ndarray], annotations: list[np.ndarray], n: int = 150) -> dict:
    """The metric again, class by class with boolean masks, from the raw 0..150 annotations."""
    inter, pred_area, label_area = np.zeros(n, int), np.zeros(n, int), np.zeros(n, int)
    for p, a in zip(preds, annotations, strict=True):
        valid = a != 0
        for c in range(n):
            inter[c] += np.sum((p == c) & (a == c + 1))
            pred_area[c] += np.sum((p == c) & valid)
            label_area[c] += np.sum(a == c + 1)
    union = pred_area + label_area - inter
    iou = [inter[c] / union[c] if union[c] else 0.0 for c in range(n)]
    return {"intersection": inter.tolist(), "union": union.tolist(), "miou": float(np.mean(iou)),
            "pixel_accuracy": inter.sum() / pred_area.sum()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Three photographs as ``.jpg`` with masks: image 0's mask is the PyTorch model's own
    PaddleSeg-protocol prediction (+1) under an ignored strip (a known answer: accuracy 1);
    the others mix the prediction (left half) with fixed classes (right half)."""
    root = tmp_path_factory.mktemp("ade") / "ADEChallengeData2016"
    (root / "images" / "validation").mkdir(parents=True)
    (root / "annotations" / "validation").mkdir(parents=True)
    model = load_model("tiny", None)
    images, preds, masks = [], [], []
    for i, name in enumerate(PHOTOS):
        stem = f"ADE_val_{i + 1:08d}"
        Image.fromarray(_photo(name)).save(root / "images" / "validation" / f"{stem}.jpg", quality=95)
        image = read_image(root / "images" / "validation" / f"{stem}.jpg")  # the decoded JPEG, as evaluate sees it
        pred = _paddleseg_reference(model, image)
        mask = (pred + 1).astype(np.uint8)
        if i:
            mask[:, mask.shape[1] // 2:] = 1 + (np.arange(mask.shape[0])[:, None] // 10) % 5 * 7
        mask[:IGNORED_ROWS] = 0
        Image.fromarray(mask).save(root / "annotations" / "validation" / f"{stem}.png")
        images.append(image)
        preds.append(pred)
        masks.append(mask)
    return {"root": root, "images": images, "preds": preds, "masks": masks}


def _check_document(doc: dict, images: int) -> None:
    assert doc["format"] == "ppmseg-evaluation/1" and doc["split"] == "validation"
    assert doc["images"] == images
    assert len(doc["per_class"]) == 150
    assert [c["name"] for c in doc["per_class"]] == list(ade20k_classes())
    assert {"miou", "pixel_accuracy", "miou_present", "classes_present", "protocol", "evaluated"} <= set(doc)


def test_pytorch_model_end_to_end_matches_own_computation(dataset, tmp_path):
    out = tmp_path / "r" / "result.json"
    proc = run_cli("evaluate", "--model", "tiny", "--dataset", str(dataset["root"].parent), "-o", str(out))
    doc = json.loads(out.read_text())
    _check_document(doc, 3)
    assert doc["evaluated"] == {"backend": "pytorch", "model": "tiny", "weights": None, "weights_sha256": None,
                                "mode": "paddleseg", "input_size": "paddleseg-eval"}
    want = _naive_scores(dataset["preds"], dataset["masks"])
    assert [c["intersection"] for c in doc["per_class"]] == want["intersection"]
    assert [c["union"] for c in doc["per_class"]] == want["union"]
    assert doc["miou"] == pytest.approx(want["miou"], abs=1e-12)
    assert doc["pixel_accuracy"] == pytest.approx(want["pixel_accuracy"], abs=1e-12)
    assert 0.2 < doc["pixel_accuracy"] < 1  # masks half made of the model's own prediction
    assert f"mIoU {doc['miou']:.2%}" in proc.stdout and "evaluate" in proc.stderr  # summary; progress on stderr


def test_known_answer_on_the_models_own_prediction(dataset):
    """Image 0's mask is the prediction itself: every scored pixel is right, every class it
    contains has IoU 1, and PaddleSeg's mIoU averages those ones with 0 for the rest."""
    out = dataset["root"].parent / "one.json"
    run_cli("evaluate", "--model", "tiny", "--dataset", str(dataset["root"]), "--limit", "1", "-o", str(out))
    doc = json.loads(out.read_text())
    present = len(np.unique(dataset["preds"][0][IGNORED_ROWS:]))
    assert doc["images"] == 1 and doc["limit"] == 1
    assert doc["pixel_accuracy"] == 1.0 and doc["miou_present"] == 1.0
    assert doc["classes_present"] == present
    assert doc["miou"] == pytest.approx(present / 150)
    assert doc["pixels"] == dataset["preds"][0][IGNORED_ROWS:].size


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from pipeline.compile.build import CompileRequest, compile_artifact

    out = tmp_path_factory.mktemp("art")
    compile_artifact(CompileRequest(model="tiny", input_size=ART_SIZE), out, log=lambda _m: None)
    return out


def test_artifact_end_to_end_and_its_pytorch_twin(dataset, artifact, tmp_path):
    from pipeline.deploy.runtime import load

    out = tmp_path / "art.json"
    run_cli("evaluate", "--artifact", str(artifact), "--dataset", str(dataset["root"]), "-o", str(out))
    doc = json.loads(out.read_text())
    _check_document(doc, 3)
    assert doc["evaluated"]["backend"] == "tvm" and doc["evaluated"]["input_size"] == list(ART_SIZE)
    assert doc["evaluated"]["upsample"] == "vim"

    seg = load(artifact)  # the library again, here: image -> compiled size -> labels -> nearest back
    want = _naive_scores([seg(im) for im in dataset["images"]], dataset["masks"])
    assert [c["intersection"] for c in doc["per_class"]] == want["intersection"]
    assert doc["miou"] == pytest.approx(want["miou"], abs=1e-12)

    # The same protocol on PyTorch: VIM at the artifact's size, nearest back to the image size.
    twin = tmp_path / "twin.json"
    run_cli("evaluate", "--model", "tiny", "--mode", "vim", "--input-size", "64x64", "--dataset",
            str(dataset["root"]), "-o", str(twin))
    t = json.loads(twin.read_text())
    assert t["evaluated"]["input_size"] == list(ART_SIZE)
    # Equal here; allow 1% of the pixels to move (BatchNorm folding may flip a near-tie elsewhere).
    moved = sum(abs(x[k] - y[k]) for x, y in zip(t["per_class"], doc["per_class"], strict=True)
                for k in ("predicted", "intersection"))
    assert t["pixels"] == doc["pixels"] and moved <= 0.01 * doc["pixels"]
    assert t["miou"] == pytest.approx(doc["miou"], rel=0.05, abs=1e-6)


# ---------------------------------------------------------------- bad input


def _layout(tmp_path: Path) -> Path:
    root = tmp_path / "ADEChallengeData2016"
    for d in ("images", "annotations"):
        (root / d / "validation").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(root / "images" / "validation" / "a.jpg")
    Image.fromarray(np.ones((8, 10), np.uint8)).save(root / "annotations" / "validation" / "a.png")
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(root / "images" / "validation" / "b.jpg")
    return root


def test_listing_accepts_both_roots_and_refuses_bad_layouts(tmp_path):
    root = _layout(tmp_path)
    Image.fromarray(np.ones((8, 10), np.uint8)).save(root / "annotations" / "validation" / "b.png")
    assert [s.image.name for s in list_samples(tmp_path)] == ["a.jpg", "b.jpg"]
    assert [s.image.name for s in list_samples(root, limit=1)] == ["a.jpg"]
    with pytest.raises(DatasetError, match="not an ADE20K folder"):
        list_samples(root / "images")


@pytest.mark.parametrize("case, message", [
    ("layout", "not an ADE20K folder"),
    ("missing", "1 of 2 images have no annotation"),
    ("size", "annotation is 8x9 (HxW) but its image b.jpg is 8x10"),
    ("empty", "no .jpg images"),
    ("label", "b.png: label 200 out of range (0 = ignored, 1..150 = classes)"),  # found mid-run
])
def test_bad_datasets_are_one_line_errors_and_write_nothing(tmp_path, case, message):
    root = _layout(tmp_path / "ds")
    if case == "layout":
        root = root / "images"
    elif case == "size":
        Image.fromarray(np.ones((8, 9), np.uint8)).save(root / "annotations" / "validation" / "b.png")
    elif case == "label":
        Image.fromarray(np.full((8, 10), 200, np.uint8)).save(root / "annotations" / "validation" / "b.png")
    elif case == "empty":
        for p in (root / "images" / "validation").iterdir():
            p.unlink()
    out = tmp_path / "result.json"
    proc = run_cli("evaluate", "--model", "tiny", "--dataset", str(root), "-o", str(out), check=False)
    assert proc.returncode == 1
    # Besides the note on random weights and the progress bar (cleared on error), one line.
    errors = [line for line in proc.stderr.splitlines()
              if line.strip() and not line.startswith(("note:", "evaluate:"))]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert not out.exists() and list(tmp_path.glob(".result.json*")) == []


def test_exactly_one_of_artifact_and_model(tmp_path):
    proc = run_cli("evaluate", "--dataset", str(tmp_path), check=False)
    assert proc.returncode == 2 and "exactly one of --artifact" in proc.stderr
    proc = run_cli("evaluate", "--artifact", str(tmp_path), "--mode", "vim", "--dataset", str(tmp_path), check=False)
    assert proc.returncode == 2 and "go with --model" in proc.stderr
