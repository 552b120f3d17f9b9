"""``ppmseg evaluate``: mIoU, per-class IoU and pixel accuracy on ADE20K's validation
split, computed as PaddleSeg 2.8 computes them.

- Dataset (``paddleseg/datasets/ade.py``, ``mode='val'``): every ``*.jpg`` of
  ``ADEChallengeData2016/images/validation`` with the ``.png`` of the same name in
  ``annotations/validation``. Annotation 0 ("other") is ignored and 1..150 are the
  classes 0..149: PaddleSeg subtracts 1 from the uint8 map, so 0 wraps to its
  ``ignore_index`` 255. The label map is not resized: scoring is at the image's size.
- Metric (``paddleseg/utils/metrics.py``: ``calculate_area``, ``mean_iou``,
  ``class_measurement``): per class, intersection, predicted and labelled pixel counts
  over non-ignored pixels, summed over the whole set; IoU = I / (P + L - I), a class
  with an empty union scores 0 and still counts in the mean (mIoU is the mean over all
  150 classes); pixel accuracy = sum(I) / sum(P).
- Prediction: a ``predict(image) -> labels`` callable (uint8 RGB ``[H, W, 3]`` to an
  ``[H, W]`` label map); ``pytorch_predictor`` and ``artifact_predictor`` build one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.image import ade20k_classes, eval_size, normalize_image, read_image, resize_labels
from model.upsample import upsample

ADE_DIR = "ADEChallengeData2016"
SPLIT = "validation"
NUM_CLASSES = 150
IGNORE_INDEX = 255  # PaddleSeg's ADE20K.IGNORE_INDEX
RESULT_FORMAT = "ppmseg-evaluation/1"
# How a compiled or PyTorch label map is brought to the image's size, per mode.
PROTOCOLS = {
    "paddleseg": "PaddleSeg 2.8 val.py: logits bilinear to the model input size, bilinear to the image size, argmax",
    "vim": "VIM label map at the model input size, nearest-neighbour to the image size",
    "interpolate": "bilinear + argmax label map at the model input size, nearest-neighbour to the image size",
}
MODES = tuple(PROTOCOLS)

Predict = Callable[[np.ndarray], np.ndarray]


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


class IoUAccumulator:
    """PaddleSeg's areas summed over a dataset (``metrics.calculate_area`` per image),
    and the scores derived from them (``metrics.mean_iou``, ``metrics.class_measurement``)."""

    def __init__(self, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.intersection = np.zeros(num_classes, np.int64)
        self.predicted = np.zeros(num_classes, np.int64)  # predicted pixels on non-ignored labels
        self.labelled = np.zeros(num_classes, np.int64)
        self.images = 0

    def update(self, pred: np.ndarray, label: np.ndarray) -> None:
        if pred.shape != label.shape:
            raise ValueError(f"prediction {list(pred.shape)} and label {list(label.shape)} differ in shape")
        pred = np.asarray(pred).astype(np.int64, copy=False).ravel()
        label = np.asarray(label).astype(np.int64, copy=False).ravel()
        if pred.size and (pred.min() < 0 or pred.max() >= self.num_classes):
            raise ValueError(f"prediction has class ids outside 0..{self.num_classes - 1}")
        keep = label != self.ignore_index
        pred, label = pred[keep], label[keep]
        n = self.num_classes
        self.predicted += np.bincount(pred, minlength=n)
        self.labelled += np.bincount(label[label < n], minlength=n)[:n]
        self.intersection += np.bincount(pred[pred == label], minlength=n)
        self.images += 1

    @property
    def union(self) -> np.ndarray:
        return self.predicted + self.labelled - self.intersection

    @property
    def class_iou(self) -> np.ndarray:
        """IoU per class; 0 where the union is empty (PaddleSeg's ``mean_iou``)."""
        union = self.union
        return np.where(union > 0, self.intersection / np.maximum(union, 1), 0.0)

    @property
    def miou(self) -> float:
        """Mean over all classes, empty-union classes included as 0 (PaddleSeg)."""
        return float(self.class_iou.mean())

    @property
    def miou_present(self) -> float | None:
        """Mean over the classes with a non-empty union only (for subsets, where many
        classes never occur); None if there are none."""
        present = self.union > 0
        return float(self.class_iou[present].mean()) if present.any() else None

    @property
    def pixel_accuracy(self) -> float | None:
        """Correct / scored pixels (PaddleSeg's ``class_measurement`` "Acc")."""
        total = int(self.predicted.sum())
        return float(self.intersection.sum() / total) if total else None

    def as_dict(self, class_names: Sequence[str] | None = None) -> dict:
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        iou, union = self.class_iou, self.union
        return {
            "miou": self.miou,
            "pixel_accuracy": self.pixel_accuracy,
            "miou_present": self.miou_present,
            "classes_present": int((union > 0).sum()),
            "pixels": int(self.predicted.sum()),
            "images": self.images,
            "per_class": [
                {"id": i, "name": names[i], "iou": float(iou[i]), "intersection": int(self.intersection[i]),
                 "union": int(union[i]), "predicted": int(self.predicted[i]), "labelled": int(self.labelled[i])}
                for i in range(self.num_classes)
            ],
        }


def evaluate(samples: Sequence[Sample], predict: Predict, num_classes: int = NUM_CLASSES,
             progress: bool = True) -> IoUAccumulator:
    """Run ``predict`` on every image and accumulate its scores against the annotation."""
    from tqdm import tqdm

    acc = IoUAccumulator(num_classes)
    # Updated by hand, not iterated: an iterating bar closes itself (leaving its line) as
    # soon as an exception leaves the loop, before it could be told to clear instead.
    bar = tqdm(total=len(samples), desc="evaluate", unit="img", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)
    try:
        for s in samples:
            label = read_annotation(s.annotation, num_classes)
            pred = predict(read_image(s.image))
            if pred.shape != label.shape:
                raise ValueError(f"{s.image.name}: prediction is {list(pred.shape)}, annotation {list(label.shape)}")
            acc.update(pred, label)
            bar.set_postfix(mIoU=f"{acc.miou:.4f}", refresh=False)
            bar.update(1)
    except BaseException:
        bar.leave = False  # the error line alone, not a half-finished bar above it
        raise
    finally:
        bar.close()
    return acc


def paddleseg_labels(logits: torch.Tensor, model_size: tuple[int, int], image_size: tuple[int, int],
                     chunk: int = 16) -> np.ndarray:
    """PaddleSeg's ``infer.inference`` with ``upsample: intepolate`` (the shipped configs):
    the model's bilinear resize of the logits to its input size, ``reverse_transform``'s
    bilinear resize back to the image size, argmax. Done ``chunk`` classes at a time so a
    large image never holds all 150 full-size channels (first maximum wins, as argmax)."""
    best = index = None
    for c0 in range(0, logits.shape[1], chunk):
        up = upsample(logits[:, c0:c0 + chunk], model_size)
        if tuple(model_size) != tuple(image_size):
            up = upsample(up, image_size)
        value, arg = up[0].max(0)
        if best is None:
            best, index = value, arg + c0
        else:
            better = value > best
            best, index = torch.where(better, value, best), torch.where(better, arg + c0, index)
    return index.to(torch.int32).numpy()


def pytorch_predictor(model, mode: str = "paddleseg",  # noqa: ANN001 - a PPMobileSeg with output="logits"
                      input_size: tuple[int, int] | None = None) -> Predict:
    """``predict`` for the PyTorch model, at PaddleSeg's eval size of each image (or at
    ``input_size``). ``model`` must return low-resolution logits."""
    from model.upsample import segment_logits

    if mode not in PROTOCOLS:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    mean, std = model.cfg.mean, model.cfg.std

    def predict(image: np.ndarray) -> np.ndarray:
        size = tuple(input_size) if input_size else eval_size(*image.shape[:2])
        with torch.inference_mode():
            logits = model(normalize_image(image, size, mean, std))
            if mode == "paddleseg":
                return paddleseg_labels(logits, size, image.shape[:2])
            labels = segment_logits(logits, size, mode)[0].numpy()
        return resize_labels(labels, image.shape[:2])

    return predict


def artifact_predictor(directory: str | Path):  # noqa: ANN201 - a CompiledSegmenter
    """``predict`` for a compiled artifact on this machine (``meta`` describes it): each
    image is resized to the compiled input size (an artifact has one fixed size), and the
    library's label map is resized back to the image's size by nearest neighbour."""
    from pipeline.runtime import load

    return load(directory)


def check_classes(num_classes: int, what: str) -> None:
    if num_classes != NUM_CLASSES:
        raise DatasetError(f"{what} has {num_classes} classes; ADE20K evaluation needs the {NUM_CLASSES}-class model")


def result_document(acc: IoUAccumulator, dataset: Path, evaluated: dict, protocol: str, limit: int | None,
                    elapsed_s: float) -> dict:
    """The JSON written by ``ppmseg evaluate -o``."""
    return {
        "format": RESULT_FORMAT,
        "dataset": str(dataset),
        "split": SPLIT,
        "limit": limit,
        "evaluated": evaluated,
        "protocol": protocol,
        "metric": "PaddleSeg 2.8 paddleseg/utils/metrics.py: areas summed over the set; IoU = I/(P+L-I), "
                  "0 for an empty union, mIoU over all classes; pixel accuracy = sum(I)/sum(P)",
        **acc.as_dict(ade20k_classes() if acc.num_classes == NUM_CLASSES else None),
        "elapsed_s": round(elapsed_s, 3),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
