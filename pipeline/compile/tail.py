"""The deployable Relax module: the imported network plus the upsampling tail.

Exported functions:
  ``main(x) -> labels``   int32 [1, H, W], through VIM or plain interpolation;
  ``logits(x) -> logits`` float32 [1, C, h, w], the network alone.
The network itself is one private function both call, so its constants exist once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import tvm
from tvm import relax

from model.upsample import VIM_MIN_CLASSES
from schedules.vim import emit_interpolate, emit_interpolate_stock, emit_vim

Upsample = Literal["vim", "interpolate"]
TAILS: dict[str, Callable[[relax.BlockBuilder, relax.Expr, tuple[int, int]], relax.Var]] = {
    "vim": emit_vim,
    "interpolate": emit_interpolate,
    "interpolate-stock": emit_interpolate_stock,  # the stock-op baseline, for the ablation
}
def effective_upsample(upsample: Upsample, num_classes: int) -> Upsample:
    """VIM is disabled below 30 classes, as in the paper and PaddleSeg."""
    return "interpolate" if upsample == "vim" and num_classes < VIM_MIN_CLASSES else upsample


def compose(network: tvm.IRModule, input_shape: tuple[int, int, int, int], upsample: Upsample) -> tvm.IRModule:
    """``network`` is a frontend's module whose ``main(x)`` returns the logits (or a
    1-tuple of them); the result has ``main`` (labels) and ``logits``."""
    if upsample not in TAILS:
        raise ValueError(f"unknown upsample {upsample!r}; choose one of {', '.join(TAILS)}")
    # Keep the importer's helper functions (from_onnx emits PrimFuncs), keyed by the
    # same GlobalVars its main refers to.
    helpers = {gv: f for gv, f in network.functions.items() if gv.name_hint != "main"}
    bb = relax.BlockBuilder(tvm.IRModule(helpers))
    net = bb.add_func(network["main"].without_attr("global_symbol"), "network")

    def emit_logits(x: relax.Var) -> relax.Var:
        out = bb.emit(relax.Call(net, [x]))
        return bb.emit(relax.TupleGetItem(out, 0)) if isinstance(out.ty, relax.TupleType) else out

    for name, tail in (("logits", None), ("main", TAILS[upsample])):
        x = relax.Var("x", relax.TensorType(input_shape, "float32"))
        with bb.function(name, [x]):
            with bb.dataflow():
                logits = emit_logits(x)
                out = bb.emit_output(logits if tail is None else tail(bb, logits, input_shape[2:]))
            bb.emit_func_output(out)
    return bb.get()
