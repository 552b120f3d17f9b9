"""What is evaluated, as ``predict(image) -> labels``: the PyTorch model under PaddleSeg's
protocol or the artifact's, or a compiled artifact."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from model.image import eval_size, normalize_image, resize_labels
from model.upsample import upsample

# How a compiled or PyTorch label map is brought to the image's size, per mode.
PROTOCOLS = {
    "paddleseg": "PaddleSeg 2.8 val.py: logits bilinear to the model input size, bilinear to the image size, argmax",
    "vim": "VIM label map at the model input size, nearest-neighbour to the image size",
    "interpolate": "bilinear + argmax label map at the model input size, nearest-neighbour to the image size",
}
MODES = tuple(PROTOCOLS)

Predict = Callable[[np.ndarray], np.ndarray]


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
    """``predict`` for a compiled artifact on this machine: each image resized to the compiled
    input size, or with several sizes placed in the entry nearest its aspect ratio (the
    runtime's ``CompiledSegmenter``), the label map resized back to the image's size."""
    from pipeline.deploy.runtime import load

    return load(directory)
