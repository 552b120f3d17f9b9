"""The first half of a MobileNetV3 inverted residual as one kernel: the 1x1 expansion, its
element-wise epilogue (bias, activation) and the depthwise convolution, on channel-blocked
tensors (``NCHW[b]c``), with the expanded tensor computed per tile of output rows and read
by the depthwise convolution from cache instead of being written whole and read back.

The expansion has as many channels as the depthwise convolution (64 at 256x256 in Tiny: a
16 MiB tensor). Per output-channel block and tile of rows, this kernel computes the rows of
the activated expansion that the tile's depthwise windows read (its halo rows twice, once
for each tile that reads them; the search can take the whole height as one tile), zero
where the depthwise convolution pads it, then the depthwise convolution of the tile.

The epilogue is data, a small expression tree over the expansion's value (``Chain``), so
the Relax pass that builds these calls (``pipeline/compile/fusion.py``) can hand over
whatever element-wise chain the importer produced: bias add, ReLU, hardswish.
"""

from __future__ import annotations

from collections.abc import Sequence

import tvm_ffi
from tvm import te, tirx
from tvm.s_tir.schedule import SBlockRV, Schedule

from schedules.blocked_conv import MAX_TILE, fuse_epilogue

SCHEDULE_RULE = "ppmseg_expand_depthwise"
# Blocks placed by the template of the block that reads them, not by MetaSchedule's rules.
_PLACED_BY_TEMPLATE = {"schedule_rule": "None"}
# Largest row tile the search may sample for the depthwise output; the whole height is
# always a candidate too (no halo recomputed).
MAX_ROW_TILE = 16

# An element-wise expression over the expansion's value: "x" (the value), a float, a
# ``("const", i)`` leaf (the i-th constant tensor, broadcast like a bias ``[1, C/b, 1, 1, b]``)
# or ``(op, a, b)`` / ``("relu", a)`` with op one of ``BINARY``.
Chain = str | float | tuple
BINARY = {
    "add": lambda a, b: a + b,
    "subtract": lambda a, b: a - b,
    "multiply": lambda a, b: a * b,
    "divide": lambda a, b: a / b,
    "maximum": tirx.max,
    "minimum": tirx.min,
}


def _evaluate(chain: Chain, x: tirx.PrimExpr, consts: Sequence[te.Tensor], index: Sequence[tirx.Var]) -> tirx.PrimExpr:
    if isinstance(chain, str):
        return x
    if isinstance(chain, float):
        return tirx.const(chain, x.dtype)
    op, *args = chain
    if op == "const":
        tensor = consts[args[0]]
        return tensor[tuple(0 if int(d) == 1 else i for d, i in zip(tensor.shape, index, strict=True))]
    values = [_evaluate(a, x, consts, index) for a in args]
    if op == "relu":
        return tirx.max(values[0], tirx.const(0, x.dtype))
    return BINARY[op](*values)


def _expansion(data: te.Tensor, weight: te.Tensor, out_dtype: str):  # noqa: ANN202 - a TE lambda
    """The 1x1 convolution's sum at ``(b, m, y, x, v)``, from blocked or plain channels."""
    rc = te.reduce_axis((0, int(data.shape[1])), "rc")
    if len(data.shape) == 4:
        return lambda b, m, y, x, v: te.sum(
            data[b, rc, y, x].astype(out_dtype) * weight[m, rc, 0, 0, v].astype(out_dtype), axis=[rc])
    rb = te.reduce_axis((0, int(data.shape[4])), "rb")
    return lambda b, m, y, x, v: te.sum(
        data[b, rc, y, x, rb].astype(out_dtype) * weight[m, rc, 0, 0, rb, v].astype(out_dtype), axis=[rc, rb])


def expand_depthwise_nchwc(data: te.Tensor, expand_weight: te.Tensor, depthwise_weight: te.Tensor,
                           consts: Sequence[te.Tensor], chain: Chain, strides: Sequence[int],
                           padding: Sequence[int], out_dtype: str) -> te.Tensor:
    """data ``[N, C/b, H, W, b]`` (or ``[N, C, H, W]``: too few channels for a block), expansion
    weight ``[M/b, C/b, 1, 1, b, b]`` (``[M/b, C, 1, 1, b]``), depthwise weight
    ``[M/b, 1, KH, KW, 1, b]`` -> the depthwise convolution ``[N, M/b, OH, OW, b]`` of
    ``chain`` applied to the expansion."""
    n, _, h, w = (int(d) for d in data.shape[:4])
    mc, lanes = int(expand_weight.shape[0]), int(expand_weight.shape[-1])
    kh, kw = int(depthwise_weight.shape[2]), int(depthwise_weight.shape[3])
    (sh, sw), (top, left, bottom, right) = strides, padding
    oh, ow = (h + top + bottom - kh) // sh + 1, (w + left + right - kw) // sw + 1
    expanded = te.compute((n, mc, h, w, lanes), _expansion(data, expand_weight, out_dtype),
                          name="expand_NCHWc", attrs=_PLACED_BY_TEMPLATE)

    def activated_padded(*index: tirx.Var) -> tirx.PrimExpr:
        b, m, y, x, v = index
        inside = tirx.all(y >= top, y < top + h, x >= left, x < left + w)
        value = _evaluate(chain, expanded[b, m, y - top, x - left, v], consts, (b, m, y - top, x - left, v))
        return tirx.if_then_else(inside, value, tirx.const(0, out_dtype))

    padded = te.compute((n, mc, h + top + bottom, w + left + right, lanes), activated_padded,
                        name="expand_activated_padded", attrs=_PLACED_BY_TEMPLATE)
    ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
    return te.compute(
        (n, mc, oh, ow, lanes),
        lambda b, m, y, x, v: te.sum(padded[b, m, y * sh + ry, x * sw + rx, v]
                                     * depthwise_weight[m, 0, ry, rx, 0, v].astype(out_dtype), axis=[ry, rx]),
        name="expand_depthwise_NCHWc", attrs={"schedule_rule": SCHEDULE_RULE})


def _row_tile(sch: Schedule, loop, extent: int):  # noqa: ANN001, ANN202 - LoopRV in and out
    """Sampled rows per tile: a divisor of the height up to ``MAX_ROW_TILE``, or all of it."""
    divisors = [d for d in range(1, min(extent, MAX_ROW_TILE) + 1) if extent % d == 0]
    if extent not in divisors:
        divisors.append(extent)
    rows = sch.sample_categorical(divisors, [1 / len(divisors)] * len(divisors))
    return sch.split(loop, [None, rows])


def schedule_expand_depthwise(sch: Schedule, block: SBlockRV) -> list[Schedule]:
    """MetaSchedule's design space for ``expand_depthwise_nchwc``: per output-channel block,
    output rows in sampled tiles; in each, the activated expansion rows the tile reads (the
    expansion's columns in a sampled register tile, lane vectorized), then the depthwise
    convolution of the tile (rows and columns in a register tile under the window, as in
    ``schedule_blocked_conv``), and the element-wise epilogue per tile."""
    n, m, y, x, v, ry, rx = sch.get_loops(block)
    extent = int(sch.get(y).extent)
    y_tile, y = _row_tile(sch, y, extent)
    y_inner_factors = sch.sample_perfect_tile(y, n=2, max_innermost_factor=MAX_TILE["y"])
    y_mid, y_reg = sch.split(y, y_inner_factors)
    x_outer, x_reg = sch.split(x, sch.sample_perfect_tile(x, n=2, max_innermost_factor=MAX_TILE["x"]))
    sch.reorder(n, m, y_tile, y_mid, x_outer, ry, rx, y_reg, x_reg, v)
    sch.unroll(y_reg)
    sch.unroll(x_reg)
    sch.vectorize(v)
    fuse_epilogue(sch, block, x_outer)
    padded = sch.get_producers(block)[0]
    sch.compute_at(padded, y_tile, preserve_unit_loops=True)
    expanded = sch.get_producers(padded)[0]
    sch.compute_at(expanded, y_tile, preserve_unit_loops=True)
    _schedule_expansion(sch, expanded)
    sch.vectorize(sch.get_loops(padded)[-1])
    return [sch]


def _schedule_expansion(sch: Schedule, block: SBlockRV) -> None:
    """The expansion's rows within a tile: columns split into a sampled register tile under
    the input-channel reductions, lane innermost."""
    loops = sch.get_loops(block)
    plain = len(sch.get(block).iter_vars) == 6  # one reduction: the input is not blocked
    x, v, *reductions = loops[-3:] if plain else loops[-4:]
    x_outer, x_reg = sch.split(x, sch.sample_perfect_tile(x, n=2, max_innermost_factor=MAX_TILE["x"]))
    sch.reorder(x_outer, *reductions, x_reg, v)
    sch.unroll(x_reg)
    sch.vectorize(v)


tvm_ffi.register_global_func(f"s_tir.meta_schedule.cpu.{SCHEDULE_RULE}", schedule_expand_depthwise, override=True)
