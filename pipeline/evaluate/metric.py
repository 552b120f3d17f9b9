"""PaddleSeg's evaluation metric (``paddleseg/utils/metrics.py``), accumulated over a set."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from model.image import read_image
from pipeline.common.progress import progress_bar
from pipeline.evaluate.dataset import IGNORE_INDEX, NUM_CLASSES, Sample, read_annotation
from pipeline.evaluate.predictors import Predict


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
    acc = IoUAccumulator(num_classes)
    with progress_bar(len(samples), "evaluate", progress) as bar:
        for s in samples:
            label = read_annotation(s.annotation, num_classes)
            pred = predict(read_image(s.image))
            if pred.shape != label.shape:
                raise ValueError(f"{s.image.name}: prediction is {list(pred.shape)}, annotation {list(label.shape)}")
            acc.update(pred, label)
            bar.set_postfix(mIoU=f"{acc.miou:.4f}", refresh=False)
            bar.update(1)
    return acc
