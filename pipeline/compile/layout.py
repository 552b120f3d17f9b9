"""Channel-blocked layout: the network's convolutions run on ``NCHW[b]c`` tensors (``b``
channels innermost, one vector register's worth: the device profile's ``channel_block``),
the way ONNX Runtime's MLAS blocks them, so that MetaSchedule vectorizes over channels.

``blocked_layout_passes(b)`` are Relax passes run before TVM's CPU pipeline:

1. ``clip`` becomes ``maximum``/``minimum``: ``clip`` has no layout inference in TVM 0.27,
   so every relu6, hardswish and hard sigmoid would be wrapped in layout transforms.
2. A dense convolution whose output channels do not fill blocks gets zero filters up to a
   block multiple, its output sliced back (the 150-class classifier) or the zero channels
   carried to its uses (``pipeline/compile/channel_padding.py``).
3. ``ConvertLayout`` with a layout per call (``conv_kind``): dense and depthwise
   convolutions whose channels fill blocks go blocked, those with too few input channels
   (the 3-channel stem, SE expansions) read NCHW and write blocked, the rest stay NCHW.
   Element-wise ops, ``mean`` and ``concat`` follow; ``reshape`` and ``matmul`` (the Sea
   attention) get their inputs back in NCHW.
4. ``resize2d`` on the blocked tensor (ConvertLayout unblocks its input, TOPI's resize takes
   ``NCHW[b]c``), and a transform that undoes the one before it is dropped.
5. The weights' layout transforms and the biases' reshapes are done here, on the constants
   (TVM's FoldConstant builds and runs a kernel for each: 16 s for Tiny); duplicate
   transforms (ConvertLayout emits one per use) are merged.
6. The activations' remaining (un)blocking transforms become fusible reshapes; then blocked
   convolutions are legalized to ``schedules.blocked_conv``'s computes, a blocked tensor's
   mean over H and W to ``schedules.blocked_mean``'s kernel, and the remaining constants
   folded.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import tvm
from tvm import relax

from pipeline.compile.channel_padding import pad_output_channels
from pipeline.compile.rewriting import function_pass, is_op, plain_layouts
from schedules.blocked_conv import CONV2D, legalize_conv2d
from schedules.blocked_mean import MEAN, legalize_mean


@relax.expr_functor.mutator
class _ClipToMaxMin(relax.PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        if not is_op(call, "relax.clip"):
            return call
        x, lo, hi = call.args
        out = x
        for bound, op in ((lo, relax.op.maximum), (hi, relax.op.minimum)):
            value = float(getattr(bound.value, "value", bound.value))  # a number or an IntImm/FloatImm
            if not math.isinf(value):
                out = op(out, relax.const(value, str(x.ty.dtype)))
        return out


def clip_to_max_min() -> tvm.transform.Pass:
    """``clip(x, lo, hi)`` -> ``minimum(maximum(x, lo), hi)`` (an infinite bound dropped)."""
    return function_pass(_ClipToMaxMin, "ClipToMaxMin")


def conv_kind(call: relax.Call, block: int) -> str:
    """How a conv2d runs with channel block ``block``: ``dense`` or ``depthwise`` (blocked in
    and out), ``widen`` (too few input channels for a block: NCHW in, blocked out) or
    ``plain`` (NCHW, e.g. a convolution to 4 or 150 channels)."""
    if not plain_layouts(call):
        return "plain"
    c = int(call.args[0].ty.shape[1])
    o, i = (int(call.args[1].ty.shape[k]) for k in (0, 1))
    if o % block:
        return "plain"
    if call.attrs.groups == 1:
        return "dense" if c % block == 0 else "widen"
    return "depthwise" if call.attrs.groups == c == o and i == 1 else "plain"


def kind_layouts(block: int) -> dict[str, tuple[str, str, str]]:
    """Data, kernel and output layout of each ``conv_kind`` with channel block ``block``."""
    b = block
    return {
        "dense": (f"NCHW{b}c", f"OIHW{b}i{b}o", f"NCHW{b}c"),
        "depthwise": (f"NCHW{b}c", f"OIHW1i{b}o", f"NCHW{b}c"),
        "widen": ("NCHW", f"OIHW{b}o", f"NCHW{b}c"),
        "plain": ("NCHW", "OIHW", "NCHW"),  # explicit, so that a blocked input is unblocked
    }


def conv_layouts(block: int) -> Callable[[relax.Call], dict[str, list[str]]]:
    """ConvertLayout's per-call callback: data, kernel and output layout of each conv2d."""
    layouts = kind_layouts(block)

    def desired(call: relax.Call) -> dict[str, list[str]]:
        return {CONV2D: list(layouts[conv_kind(call, block)])} if call.op.name == CONV2D else {}

    return desired


def _provably_equal(index_map: tvm.tirx.IndexMap, shape: list, got: list, expected: list) -> bool:
    """Whether index expressions ``got`` and ``expected`` are equal for every value of
    ``index_map``'s indices over ``shape``."""
    analyzer = tvm.sym.Analyzer()
    for var, extent in zip(index_map.initial_indices, shape, strict=True):
        analyzer.bind(var, tvm.ir.Range(0, extent))
    return len(got) == len(expected) and all(
        analyzer.can_prove_equal(g, e) for g, e in zip(got, expected, strict=True))


def _undoes(inner: relax.Call, outer: relax.Call) -> bool:
    """Whether layout_transform ``outer`` maps ``inner``'s output back to its input."""
    first, second = inner.attrs.index_map, outer.attrs.index_map
    indices = list(first.initial_indices)
    return _provably_equal(first, inner.args[0].ty.shape, second.map_indices(first.map_indices(indices)), indices)


@relax.expr_functor.mutator
class _BlockedResize(relax.PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        arg = call.args[0] if call.args and isinstance(call.args[0], relax.Var) else None
        producer = self.lookup_binding(arg) if arg is not None else None
        if not is_op(producer, "relax.layout_transform"):
            return call
        if is_op(call, "relax.layout_transform") and _undoes(producer, call):
            return producer.args[0]
        blocked = producer.args[0]
        if is_op(call, "relax.image.resize2d") and call.attrs.layout == "NCHW" and len(blocked.ty.shape) == 5:
            a = call.attrs
            resized = self.builder_.emit(relax.op.image.resize2d(
                blocked, call.args[1], roi=[float(r) for r in a.roi], layout=f"NCHW{int(blocked.ty.shape[4])}c",
                method=a.method, coordinate_transformation_mode=a.coordinate_transformation_mode,
                rounding_method=a.rounding_method, cubic_alpha=a.cubic_alpha, cubic_exclude=a.cubic_exclude,
                extrapolation_value=a.extrapolation_value))
            return relax.op.layout_transform(resized, producer.attrs.index_map)
        return call


def blocked_resize() -> tvm.transform.Pass:
    """``resize2d`` of a tensor that was just unblocked resizes the blocked one and unblocks
    after; a layout_transform that undoes the one before it is dropped."""
    return function_pass(_BlockedResize, "BlockedResize")


def _lane_axis_move(call: relax.Call) -> str | None:
    """``"block"`` for a layout_transform ``[N, C, ...] -> [N, C/b, ..., b]`` without
    padding, ``"unblock"`` for the reverse, otherwise None."""
    src, dst = call.args[0].ty.shape, call.ty.shape
    if call.attrs.pad_value is not None or abs(len(src) - len(dst)) != 1 or len(dst) < 3:
        return None
    direction, blocked = ("block", dst) if len(dst) > len(src) else ("unblock", src)
    b = int(blocked[-1])
    index_map = call.attrs.index_map
    n, c, *rest = index_map.initial_indices
    if direction == "block":
        expected = [n, tvm.tirx.floordiv(c, b), *rest, tvm.tirx.floormod(c, b)]
    else:
        expected = [n, c * b + rest[-1], *rest[:-1]]
    mapped = index_map.map_indices(list(index_map.initial_indices))
    return direction if _provably_equal(index_map, src, mapped, expected) else None


@relax.expr_functor.mutator
class _TransformsAsReshapes(relax.PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        direction = _lane_axis_move(call) if is_op(call, "relax.layout_transform") else None
        if direction is None:
            return call
        x, out = call.args[0], [int(d) for d in call.ty.shape]
        rank = len(out)
        if direction == "block":  # [N, C, *S] -> [N, C/b, b, *S] -> [N, C/b, *S, b]
            split = self.builder_.emit(relax.op.reshape(x, [*out[:2], out[-1], *out[2:-1]]))
            return relax.op.permute_dims(split, [0, 1, *range(3, rank), 2])
        # [N, C/b, *S, b] -> [N, C/b, b, *S] -> [N, C, *S]
        lane_second = self.builder_.emit(relax.op.permute_dims(x, [0, 1, rank, *range(2, rank)]))
        return relax.op.reshape(lane_second, out)


def transforms_as_reshapes() -> tvm.transform.Pass:
    """Channel blocking and unblocking ``layout_transform``s become ``reshape`` +
    ``permute_dims``: TVM legalizes ``layout_transform`` as an opaque kernel, which FuseOps
    never fuses, while these fuse with the element-wise and slicing work beside them."""
    return function_pass(_TransformsAsReshapes, "TransformsAsReshapes")


@relax.expr_functor.mutator
class _FoldWeightLayouts(relax.PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        if not (is_op(call, "relax.reshape") or is_op(call, "relax.layout_transform")):
            return call
        arg = call.args[0]
        if isinstance(arg, relax.Var):  # a constant bound to a name
            arg = self.lookup_binding(arg)
        if not isinstance(arg, tvm.ir.expr.Constant):
            return call
        value, shape = arg.value, [int(d) for d in call.ty.shape]
        if is_op(call, "relax.reshape"):
            return relax.const(value.numpy().reshape(shape))
        if is_op(call, "relax.layout_transform") and call.attrs.pad_value is None and [
                int(d) for d in call.attrs.index_map.map_shape(list(arg.ty.shape))] == shape:
            return relax.const(call.attrs.index_map.map_tensor(value))
        return call  # a padded transform is left to run


def fold_weight_layouts() -> tvm.transform.Pass:
    """``layout_transform`` and ``reshape`` of a constant (a weight or a bias) become the
    transformed constant."""
    return function_pass(_FoldWeightLayouts, "FoldWeightLayouts")


def blocked_layout_passes(block: int) -> list[tvm.transform.Pass]:
    """The passes, in order, that put the convolutions in ``NCHW{block}c`` (before
    ``legalize_blocked``)."""
    return [
        clip_to_max_min(),
        fold_weight_layouts(),  # biases as constants, for pad_output_channels
        pad_output_channels(block),
        relax.transform.ConvertLayout({}, layout_cb=conv_layouts(block)),
        relax.transform.Normalize(),
        blocked_resize(),
        fold_weight_layouts(),
        relax.transform.EliminateCommonSubexpr(),
        relax.transform.CanonicalizeBindings(),
        relax.transform.DeadCodeElimination(),
        transforms_as_reshapes(),
    ]


def legalize_blocked() -> list[tvm.transform.Pass]:
    """Legalization with the blocked convolutions' computes and the blocked global mean's
    kernel, then the constants folded."""
    return [
        relax.transform.LegalizeOps(customize_legalize_map={CONV2D: legalize_conv2d, MEAN: legalize_mean}),
        relax.transform.FoldConstant(),  # what is left; here once, not in every build
    ]
