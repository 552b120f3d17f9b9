"""Paddle Inference (CPU) on the official PaddleSeg 2.8 PP-MobileSeg with ``upsample="vim"``,
exported with ``paddle.jit.save``. Runs only under the reference environment (``.venv-ref``):
imports nothing but paddle, paddleseg, NumPy and the standard library.

Two Paddle 3.3.1 defects need a way around (found here, not in PaddleSeg's code):

- PaddleSeg's VIM writes the class ids back with a Python loop of masked assignments
  (``pred_retrieve[pred == i] = labelset[i]``), which ``paddle.jit.save`` cannot export
  under PIR ("Not found key in IRMapping"; the old IR fails earlier, in the backbone). And
  PIR types ``paddle.unique``'s output float32 whatever its input, so an int64 ``unique``
  result fed to any later kernel fails at run time ("float32 does not match int64").
  ``ExportablePPMobileSeg`` therefore runs the same VIM with ``unique`` over the argmax
  cast to float32 (class ids are exact in float32) and one ``gather`` for the write-back:
  the same label map, in graph form.
- oneDNN's ``bilinear_interp`` kernel rejects its own ``scale`` attribute under PIR
  ("ConvertPirAttribute2RuntimeAttribute not support ArrayAttribute<DoubleAttribute>"), so
  backend ``onednn`` enables oneDNN without ``onednn_placement_pass``: oneDNN's fusion
  passes still give fused convolutions, matmuls and element-wise ops, the rest runs on
  Paddle's own CPU kernels. Backend ``native`` is Paddle's CPU kernels alone.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np

# paddleseg imports visualdl (training logs only) at import time; the model does not need it.
sys.modules.setdefault("visualdl", types.ModuleType("visualdl"))

import paddle  # noqa: E402
import paddle.nn.functional as F  # noqa: E402
from paddleseg.models.backbones.strideformer import MobileSeg_Base, MobileSeg_Tiny  # noqa: E402
from paddleseg.models.pp_mobileseg import PPMobileSeg  # noqa: E402

# paddle.jit.save writes <prefix>.json (PIR program) + <prefix>.pdiparams, one model per output
PREFIXES = {"labels": "model", "logits": "logits"}
BACKENDS = ("onednn", "native")
# The official ADE20K configs of PaddleSeg 2.8 (as tests/reference/generate.py builds them).
BACKBONES = {
    "tiny": lambda: MobileSeg_Tiny(inj_type="AAM", out_feat_chs=[32, 64, 128]),
    "base": lambda: MobileSeg_Base(inj_type="AAMSx8", out_feat_chs=[64, 128, 192]),
}


class ExportablePPMobileSeg(PPMobileSeg):
    """PaddleSeg's PPMobileSeg with its VIM branch in exportable ops (see the module doc), or
    with ``logits_only`` the network alone (the decode head's low-resolution logits)."""

    logits_only = False

    def forward(self, x):  # noqa: ANN001, ANN201 - paddle tensors
        if self.logits_only:
            return [self.decode_head(self.backbone(x))]
        if self.upsample != "vim" or self.training or self.num_classes < 30:
            return super().forward(x)
        x_hw = x.shape[2:]
        x = self.decode_head(self.backbone(x))
        labelset = paddle.unique(paddle.argmax(x, 1).cast("float32"))
        x = paddle.gather(x, labelset.cast("int64"), axis=1)
        x = F.interpolate(x, x_hw, mode="bilinear", align_corners=self.align_corners)
        pred = paddle.argmax(x, 1)
        return [paddle.gather(labelset, pred.flatten()).reshape(pred.shape).cast("int32")]


def prepare(spec: dict) -> dict:
    paddle.set_device("cpu")
    model = ExportablePPMobileSeg(num_classes=150, backbone=BACKBONES[spec["model"]](), upsample="vim")
    missing, unexpected = model.set_state_dict(paddle.load(spec["checkpoint"]))
    if missing or unexpected:
        raise ValueError(f"{spec['checkpoint']}: does not fit PaddleSeg's PP-MobileSeg-{spec['model']} "
                         f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
    model.eval()
    out = Path(spec["artifact_dir"])
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for output, prefix in PREFIXES.items():
        model.logits_only = output == "logits"
        files[output] = _export(model, spec["input_size"], out, prefix)
    return {"files": files["labels"], "counts": " + ".join(files["labels"]) + " (paddle.jit.save inference model)"}


def _export(model: ExportablePPMobileSeg, size: list[int], out: Path, prefix: str) -> list[str]:
    """``paddle.jit.save`` of ``model`` as it is now; the files written."""
    for old in out.glob(prefix + ".*"):  # so that the size counts only this export's files
        old.unlink()
    static = paddle.jit.to_static(model, input_spec=[paddle.static.InputSpec([1, 3, *size], "float32", "x")],
                                  full_graph=True)
    paddle.jit.save(static, str(out / prefix))
    return sorted(p.name for p in out.iterdir() if p.name.startswith(prefix + "."))


def load(spec: dict) -> Callable[[np.ndarray], np.ndarray]:
    from paddle import inference

    backend = spec.get("backend", "onednn")
    if backend not in BACKENDS:
        raise ValueError(f"unknown Paddle backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    out = Path(spec["artifact_dir"])
    prefix = PREFIXES[spec.get("output", "labels")]
    config = inference.Config(str(out / f"{prefix}.json"), str(out / f"{prefix}.pdiparams"))
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(int(spec["threads"]))
    config.switch_ir_optim(True)
    config.disable_glog_info()
    if backend == "onednn":
        config.enable_onednn()
        config.delete_pass("onednn_placement_pass")
    else:
        config.disable_onednn()
    predictor = inference.create_predictor(config)
    source = predictor.get_input_handle(predictor.get_input_names()[0])
    sink = predictor.get_output_handle(predictor.get_output_names()[0])

    def run(x: np.ndarray) -> np.ndarray:
        source.reshape(list(x.shape))
        source.copy_from_cpu(x)
        predictor.run()
        return sink.copy_to_cpu()

    run.settings = {"precision": "fp32", "threads": int(spec["threads"]),
                    "fast path": "oneDNN's fused convolutions, matmuls and element-wise ops; the rest on Paddle's "
                                 "own CPU kernels" if backend == "onednn" else "Paddle's own CPU kernels"}
    return run
