"""Convolutions on channel-blocked tensors (``NCHW[b]c``: ``b`` channels innermost, one
vector register's worth), as TE computes MetaSchedule schedules like any other kernel, and
the Relax legalization that puts them in place of blocked ``relax.nn.conv2d`` calls.

TVM 0.27's own legalization refuses blocked layouts ("Conv2D where data layout or kernel
layout have channel chunk cannot be legalized by TOPI at this moment"). TOPI's
``conv2d_NCHWc`` folds the input channels into one axis split by div/mod; these keep chunk
and lane as separate reduction axes, which MetaSchedule tiles cleanly, and sum in the same
order as the NCHW kernels (the logits are bitwise equal).

Each compute carries a ``schedule_rule`` annotation, so MetaSchedule designs its candidates
with ``schedule_blocked_conv`` (a template with tunable tile sizes, registered below) instead
of its generic multi-level tiling, which splits the channel lane axis like any other and
rarely leaves it whole and innermost for the vector unit (the measurement is in the commit
that added the template).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import tvm
import tvm_ffi
from tvm import relax, te, topi
from tvm.s_tir.schedule import LoopRV, SBlockRV, Schedule

CONV2D = "relax.nn.conv2d"
SCHEDULE_RULE = "ppmseg_blocked_conv"
_ANNOTATION = {"schedule_rule": SCHEDULE_RULE}
# Largest register tile MetaSchedule may sample per axis (output blocks, rows, columns);
# their product is the number of vector accumulators.
MAX_TILE = {"o": 4, "y": 4, "x": 16}


def _padded(data: te.Tensor, kh: int, kw: int, strides: Sequence[int], padding: Sequence[int],
            dilation: Sequence[int]) -> tuple[te.Tensor, int, int]:
    """``data`` zero-padded on H and W (axes 2, 3), and the output height and width."""
    h, w = int(data.shape[2]), int(data.shape[3])
    (sh, sw), (dh, dw) = strides, dilation
    top, left, bottom, right = padding
    oh = (h + top + bottom - (kh - 1) * dh - 1) // sh + 1
    ow = (w + left + right - (kw - 1) * dw - 1) // sw + 1
    rest = [0] * (len(data.shape) - 4)
    if any(padding):
        data = topi.nn.pad(data, [0, 0, top, left, *rest], [0, 0, bottom, right, *rest])
    return data, oh, ow


def conv2d_nchwc(data: te.Tensor, kernel: te.Tensor, strides: Sequence[int], padding: Sequence[int],
                 dilation: Sequence[int], out_dtype: str) -> te.Tensor:
    """data ``[N, C/b, H, W, b]``, kernel ``[O/b, C/b, KH, KW, b(in), b(out)]`` -> ``[N, O/b, OH, OW, b]``."""
    oc, icc, kh, kw, icb, ob = (int(d) for d in kernel.shape)
    pad, oh, ow = _padded(data, kh, kw, strides, padding, dilation)
    (sh, sw), (dh, dw) = strides, dilation
    rc, rb = te.reduce_axis((0, icc), "rc"), te.reduce_axis((0, icb), "rb")
    ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
    return te.compute(
        (int(data.shape[0]), oc, oh, ow, ob),
        lambda n, o, y, x, v: te.sum(
            pad[n, rc, y * sh + ry * dh, x * sw + rx * dw, rb].astype(out_dtype)
            * kernel[o, rc, ry, rx, rb, v].astype(out_dtype), axis=[rc, ry, rx, rb]),
        name="conv2d_NCHWc", attrs=_ANNOTATION)


def depthwise_conv2d_nchwc(data: te.Tensor, kernel: te.Tensor, strides: Sequence[int], padding: Sequence[int],
                           dilation: Sequence[int], out_dtype: str) -> te.Tensor:
    """data ``[N, C/b, H, W, b]``, kernel ``[C/b, 1, KH, KW, 1, b]`` -> ``[N, C/b, OH, OW, b]``."""
    n, cc, _, _, cb = (int(d) for d in data.shape)
    kh, kw = int(kernel.shape[2]), int(kernel.shape[3])
    pad, oh, ow = _padded(data, kh, kw, strides, padding, dilation)
    (sh, sw), (dh, dw) = strides, dilation
    ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
    return te.compute(
        (n, cc, oh, ow, cb),
        lambda b, c, y, x, v: te.sum(
            pad[b, c, y * sh + ry * dh, x * sw + rx * dw, v].astype(out_dtype)
            * kernel[c, 0, ry, rx, 0, v].astype(out_dtype), axis=[ry, rx]),
        name="depthwise_conv2d_NCHWc", attrs=_ANNOTATION)


def conv2d_nchw_to_nchwc(data: te.Tensor, kernel: te.Tensor, strides: Sequence[int], padding: Sequence[int],
                         dilation: Sequence[int], out_dtype: str) -> te.Tensor:
    """data ``[N, C, H, W]``, kernel ``[O/b, C, KH, KW, b]`` -> ``[N, O/b, OH, OW, b]``: a convolution
    whose input channels do not fill a block (the 3-channel stem, an SE expansion)."""
    oc, c, kh, kw, ob = (int(d) for d in kernel.shape)
    pad, oh, ow = _padded(data, kh, kw, strides, padding, dilation)
    (sh, sw), (dh, dw) = strides, dilation
    rc = te.reduce_axis((0, c), "rc")
    ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
    return te.compute(
        (int(data.shape[0]), oc, oh, ow, ob),
        lambda n, o, y, x, v: te.sum(
            pad[n, rc, y * sh + ry * dh, x * sw + rx * dw].astype(out_dtype)
            * kernel[o, rc, ry, rx, v].astype(out_dtype), axis=[rc, ry, rx]),
        name="conv2d_NCHW_to_NCHWc", attrs=_ANNOTATION)


def schedule_blocked_conv(sch: Schedule, block: SBlockRV) -> list[Schedule]:
    """MetaSchedule's design space for one of the computes above: output blocks, rows and
    columns split by sampled factors into a register tile (unrolled, the channel lane
    vectorized innermost) under the reductions, and the element-wise epilogue computed
    per tile. Depthwise convolutions (two reductions) tile rows and columns only."""
    n, o, y, x, v, *reductions = sch.get_loops(block)
    depthwise = len(reductions) == 2
    tiles = {"y": y, "x": x} if depthwise else {"o": o, "y": y, "x": x}
    outer, inner = {}, []
    for axis, loop in tiles.items():
        factors = sch.sample_perfect_tile(loop, n=2, max_innermost_factor=MAX_TILE[axis])
        outer[axis], tile = sch.split(loop, factors)
        inner.append(tile)
    sch.reorder(n, *([o] if depthwise else []), *outer.values(), *reductions, *inner, v)
    for loop in inner:
        sch.unroll(loop)
    sch.vectorize(v)
    fuse_epilogue(sch, block, outer["x"])
    return [sch]


def fuse_epilogue(sch: Schedule, block: SBlockRV, loop: LoopRV) -> None:
    """Inline the element-wise blocks after ``block`` into the last one and compute that one
    in ``loop``, so each tile is written once, finished. A step the blocks do not allow (a
    failed primitive leaves the schedule as it was) leaves the rest to the default rules."""
    try:
        while middle := [c for c in sch.get_consumers(block) if sch.get_consumers(c)]:
            sch.compute_inline(middle[0])
        last = sch.get_consumers(block)
        if len(last) == 1:
            sch.reverse_compute_at(last[0], loop, preserve_unit_loops=True)
    except tvm.s_tir.ScheduleError:
        pass


# MetaSchedule's ApplyCustomRule looks the annotation up under each of the target's keys.
tvm_ffi.register_global_func(f"s_tir.meta_schedule.cpu.{SCHEDULE_RULE}", schedule_blocked_conv, override=True)


def _compute_for(data_layout: str, kernel_layout: str, block: int):  # noqa: ANN202 - one of the computes
    return {
        (f"NCHW{block}c", f"OIHW{block}i{block}o"): conv2d_nchwc,
        (f"NCHW{block}c", f"OIHW1i{block}o"): depthwise_conv2d_nchwc,
        ("NCHW", f"OIHW{block}o"): conv2d_nchw_to_nchwc,
    }.get((data_layout, kernel_layout))


def out_dtype(call: relax.Call) -> str:
    """A ``relax.nn.conv2d``'s accumulation type: the ONNX importer leaves ``out_dtype`` unset
    (None), torch.export's sets it or "void"; then the result's type."""
    dtype = str(call.attrs.out_dtype)
    return dtype if dtype not in ("", "void", "None") else str(call.ty.dtype)


def legalize_conv2d(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """A ``relax.nn.conv2d`` with a blocked output becomes a call of the matching compute;
    any other goes to TVM's registered legalization."""
    attrs = call.attrs
    blocked = re.fullmatch(r"NCHW(\d+)c", attrs.out_layout)
    if not blocked:
        return tvm.ir.Op.get(CONV2D).get_attr("FLegalize")(bb, call)
    compute = _compute_for(attrs.data_layout, attrs.kernel_layout, int(blocked.group(1)))
    if compute is None:
        raise ValueError(f"no blocked conv2d for {attrs.data_layout} x {attrs.kernel_layout} -> {attrs.out_layout}")
    return bb.call_te(compute, call.args[0], call.args[1], [int(s) for s in attrs.strides],
                      [int(p) for p in attrs.padding], [int(d) for d in attrs.dilation], out_dtype(call),
                      primfunc_name_hint=compute.__name__)
