"""The result of ``ppmseg evaluate``: what was evaluated and the JSON written with ``-o``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from model.image import ade20k_classes
from pipeline.evaluate.dataset import NUM_CLASSES, SPLIT, check_classes
from pipeline.evaluate.metric import IoUAccumulator
from pipeline.evaluate.predictors import Predict, artifact_predictor, pytorch_predictor

RESULT_FORMAT = "ppmseg-evaluation/1"


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


@dataclass(frozen=True)
class Subject:
    """What is evaluated: its ``predict``, its record in the JSON, and a line describing it."""

    predict: Predict
    evaluated: dict
    mode: str  # a key of PROTOCOLS
    description: str
    random_weights: bool  # the fixed random initialization (the scores mean nothing)


def artifact_subject(directory: Path) -> Subject:
    """A compiled artifact run on this machine at its compiled size."""
    predict = artifact_predictor(directory)
    meta = predict.meta
    check_classes(predict.num_classes, str(directory))
    mode, size = meta["upsample"], predict.input_size
    evaluated = {"backend": "tvm", "artifact": str(directory), "model": meta["variant"],
                 "weights_sha256": meta.get("weights_sha256"), "upsample": mode, "input_size": list(size),
                 "device": meta["device"], "tuned": meta.get("tuned"), "so_sha256": meta["so_sha256"]}
    what = f"{directory} (PP-MobileSeg-{meta['variant']}, TVM, {mode}, {'x'.join(map(str, size))})"
    return Subject(predict, evaluated, mode, what, meta.get("weights_sha256") is None)


def model_subject(name: str, weights: Path | None, mode: str | None, size: tuple[int, int] | None) -> Subject:
    """The PyTorch model, by default under PaddleSeg's protocol at each image's eval size."""
    from model.weights import load_model
    from pipeline.compile.artifact import sha256_file

    mode = mode or "paddleseg"
    model = load_model(name, weights, output="logits")
    check_classes(model.cfg.num_classes, f"PP-MobileSeg-{name}")
    evaluated = {"backend": "pytorch", "model": name, "weights": str(weights) if weights else None,
                 "weights_sha256": sha256_file(weights) if weights else None, "mode": mode,
                 "input_size": list(size) if size else "paddleseg-eval"}
    where = "x".join(map(str, size)) if size else "PaddleSeg eval size"
    what = f"PP-MobileSeg-{name} (PyTorch, {mode}, {where})"
    return Subject(pytorch_predictor(model, mode, size), evaluated, mode, what, weights is None)
