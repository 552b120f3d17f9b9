"""The deployable Relax module: the imported network plus the upsampling tail.

Exported functions:
  ``main(x) -> labels``   int32 [1, H, W], through VIM or plain interpolation;
  ``logits(x) -> logits`` float32 [1, C, h, w], the network alone;
and for a library with several input sizes, ``main_HxW`` and ``logits_HxW`` for each
size after the first. The network itself is one private function per size that both
call, so its constants exist once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import tvm
from tvm import relax

from model.upsample import VIM_MIN_CLASSES
from pipeline.compile.artifact import entry_functions
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
    return compose_entries({tuple(input_shape[2:]): network}, upsample)


def compose_entries(networks: dict[tuple[int, int], tvm.IRModule], upsample: Upsample) -> tvm.IRModule:
    """One entry per input size (``networks``: the network imported at each, the default
    first), its functions named by ``entry_functions``; each network a private function
    its two entry functions call. Identical weights are stored once in the library (the VM's
    constant pool is deduplicated by value)."""
    if upsample not in TAILS:
        raise ValueError(f"unknown upsample {upsample!r}; choose one of {', '.join(TAILS)}")
    # Keep an importer's helper functions (from_onnx emits PrimFuncs), keyed by the same
    # GlobalVars its main refers to; only one network may have them (names would collide).
    helpers = {gv: f for network in networks.values() for gv, f in network.functions.items() if gv.name_hint != "main"}
    bb = relax.BlockBuilder(tvm.IRModule(helpers))
    for entry, (size, network) in zip(entry_functions(list(networks)), networks.items(), strict=True):
        suffix = entry["main"][len("main"):]
        net = bb.add_func(network["main"].without_attr("global_symbol"), f"network{suffix}")
        for name, tail in ((entry["logits"], None), (entry["main"], TAILS[upsample])):
            x = relax.Var("x", network["main"].params[0].ty)  # [1, C, *size]: C is 3 for the model
            with bb.function(name, [x]):
                with bb.dataflow():
                    out = bb.emit(relax.Call(net, [x]))
                    logits = bb.emit(relax.TupleGetItem(out, 0)) if isinstance(out.ty, relax.TupleType) else out
                    out = bb.emit_output(logits if tail is None else tail(bb, logits, size))
                bb.emit_func_output(out)
    return bb.get()
