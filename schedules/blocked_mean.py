"""The global average of a channel-blocked tensor (``NCHW[b]c`` mean over H and W, keeping
them: the squeeze-and-excitation pooling of MobileNetV3's first stage), hand-scheduled.

MetaSchedule's candidates for this reduction summed all H x W pixels into one vector of
``b`` channels, one add after another (after 88 trials on `znver5`, 0.61 ms for Tiny's
256x256x16 pooling, the network's heaviest kernel; reading its 4 MB takes about a tenth of
that). Here the rows are cut into chunks summed in parallel, and each chunk's columns into
``ACCUMULATORS`` interleaved sums, so the adds do not wait on each other; the lane axis is
vectorized. The partial sums are then added up and divided.
"""

from __future__ import annotations

import tvm
from tvm import relax, te, tirx

from schedules.vim import hand_scheduled, largest_divisor_at_most

MEAN = "relax.mean"
ACCUMULATORS = 8  # independent vector sums per chunk: an add's latency times the adds issued per cycle
CHUNKS = 8  # row chunks, one parallel task each


def mean_hw_primfunc(shape: tuple[int, ...], dtype: str) -> tirx.PrimFunc:
    """``[N, C/b, H, W, b] -> [N, C/b, 1, 1, b]``, scheduled."""
    n, c, h, w, b = shape
    p, f = largest_divisor_at_most(h, CHUNKS), largest_divisor_at_most(w, ACCUMULATORS)
    data = te.placeholder(shape, dtype, "data")
    ry, rx = te.reduce_axis((0, h // p), "ry"), te.reduce_axis((0, w // f), "rx")
    partial = te.compute((n, c, p, f, b), lambda i, j, q, k, v: te.sum(
        data[i, j, q * (h // p) + ry, rx * f + k, v], axis=[ry, rx]), name="partial")
    rq, rk = te.reduce_axis((0, p), "rq"), te.reduce_axis((0, f), "rk")
    total = te.compute((n, c, 1, 1, b), lambda i, j, _y, _x, v: te.sum(partial[i, j, rq, rk, v], axis=[rq, rk]),
                       name="total")
    out = te.compute(total.shape, lambda *idx: total(*idx) / tirx.const(h * w, dtype), name="mean")
    sch = tvm.s_tir.Schedule(te.create_prim_func([data, out]))
    block = sch.get_sblock("partial")
    i, j, q, k, v, y, x = sch.get_loops(block)
    sch.reorder(i, j, q, y, x, k, v)
    outer = sch.fuse(i, j, q)
    sch.parallel(outer)
    sch.unroll(k)
    sch.vectorize(v)
    init = sch.decompose_reduction(block, y)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.vectorize(sch.get_loops(sch.get_sblock("mean"))[-1])
    return hand_scheduled(sch.mod["main"].without_attr("global_symbol"))  # named by the Relax module


def _is_hw_mean(call: relax.Call) -> bool:
    shape = call.args[0].ty.shape
    axes = [int(a) for a in call.attrs.axis] if call.attrs.axis is not None else []
    return len(shape) == 5 and axes == [2, 3] and bool(call.attrs.keepdims)


def legalize_mean(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """A blocked tensor's mean over H and W becomes the kernel above; any other mean goes to
    TVM's registered legalization."""
    if not _is_hw_mean(call):
        return tvm.ir.Op.get(MEAN).get_attr("FLegalize")(bb, call)
    shape, dtype = tuple(int(d) for d in call.args[0].ty.shape), str(call.args[0].ty.dtype)
    gv = bb.add_func(mean_hw_primfunc(shape, dtype), "mean_hw_nchwc_" + "x".join(map(str, shape)))
    return relax.call_tir(gv, [call.args[0]], call.ty)
