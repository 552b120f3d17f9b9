"""Valid Interpolate Module (VIM) as one fused, hand-scheduled TIR kernel, plus the Relax
helpers that put it (or the plain upsample + argmax) behind a model's logits.

Semantics are those of ``model.upsample.vim_labels`` for a batch of one: ``present`` are
the sorted class ids that win somewhere in the low-resolution argmax (K of them, known
only at run time); only those channels are bilinearly upsampled (PyTorch
``align_corners=False``); the per-pixel winner among them (first max on ties) is mapped
back to its class id.

The kernel is separable, like PyTorch's CPU bilinear kernel (horizontal lerp, then
vertical). It works on tiles of output rows x columns, parallel over tiles. Per tile and
per chunk of channels it lerps the few input rows the tile needs to the tile's output
columns (``hrow``), then lerps those rows vertically and keeps a running max/argmax per
pixel in registers across the chunk, and in a per-tile buffer between chunks.

Benchmark: ``make bench-vim`` (``pipeline/bench/vim.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.script import tirx as T

from rpc.devices import load_profile

__all__ = [
    "VimSchedule",
    "build_vim",
    "emit_interpolate",
    "emit_interpolate_stock",
    "emit_vim",
    "emit_vim_unfused",
    "argmax_primfunc",
    "labels_module",
    "vim_primfunc",
]

VIM_FUNC_NAME = "vim"


@dataclass(frozen=True)
class VimSchedule:
    """Tiling knobs of the fused kernel (targets; the kernel adapts them to the shape).

    Defaults measured best on a 2-core Zen 5 host for 64x64 -> 512x512, 150 classes.
    """

    tile_rows: int = 64  # output rows per parallel task
    tile_cols: int = 64  # output columns per parallel task (rounded to a divisor of W)
    chunk: int = 8  # channels whose running max stays in registers between loads
    vector: int = 16  # lanes per vector (16 x float32 = one AVX-512 register)
    max_window: int = 8  # input columns one output vector may touch before falling back to gathers


def _taps(n_in: int, n_out: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Index pairs (i0, i1) of the half-pixel source coordinate, rounded twice in float32
    and once (as a fused multiply-add would), so that static bounds cover both."""
    scale = np.float32(n_in) / np.float32(n_out)
    dst = np.arange(n_out, dtype=np.float32) + np.float32(0.5)
    variants = (dst * scale - np.float32(0.5), (dst.astype(np.float64) * np.float64(scale) - 0.5).astype(np.float32))
    pairs = []
    for src in variants:
        i0 = np.floor(np.maximum(src, np.float32(0))).astype(np.int64)
        pairs.append((i0, np.minimum(i0 + 1, n_in - 1)))
    return pairs


def largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0)


def vim_primfunc(C: int, h: int, w: int, H: int, W: int, schedule: VimSchedule | None = None) -> tirx.PrimFunc:
    """Fused VIM kernel ``vim(logits[1, C, h, w] f32, present[K] i64, out[1, H, W] i32)``.

    ``K`` is a symbolic ``int64`` taken from ``present`` at run time. ``present`` must hold
    1 <= K valid class ids (``unique(argmax(logits, 1))`` always does); they are not
    bounds-checked. Logits must be finite (so must they for PyTorch's bilinear: inf * 0).
    """
    s = schedule or VimSchedule()
    # Vector width: the largest power of two <= s.vector dividing W (odd W runs scalar).
    VW = next(v for v in (16, 8, 4, 2, 1) if v <= s.vector and W % v == 0)
    TW = VW * largest_divisor_at_most(W // VW, max(1, s.tile_cols // VW))
    NT_X = W // TW
    NT_Y = math.ceil(H / min(s.tile_rows, H))
    TH = math.ceil(H / NT_Y)  # the last row tile is shifted up to end at H
    KC = s.chunk
    if KC not in (1, 2, 4, 8, 16):
        raise ValueError(f"chunk must be a power of two <= 16, got {KC}")

    yt, xt = _taps(h, H), _taps(w, W)
    row_starts = [min(t * TH, H - TH) for t in range(NT_Y)]
    # Input rows one row tile needs, and input columns one output vector needs.
    R = max(int(y1[r + TH - 1] - y0[r] + 1) for y0, y1 in yt for r in row_starts)
    S = max(int(x1[c + VW - 1] - x0[c] + 1) for x0, x1 in xt for c in range(0, W, VW))
    windowed = S <= s.max_window
    guard_rows = H % TH != 0
    sy = float(np.float32(h) / np.float32(H))
    sx = float(np.float32(w) / np.float32(W))

    def hlerp(logits, c, yi, base, coef, X0, X1, WX0, WX1, x):
        """Horizontal lerp of input row ``yi`` of channel ``c`` at output column ``x``."""
        if not windowed:  # downsampling: plain gathers
            return logits[0, c, yi, X0[x]] * WX0[x] + logits[0, c, yi, X1[x]] * WX1[x]
        # Upsampling: the vector's taps lie in S columns from ``base``; broadcast them and
        # weight with per-lane coefficients (zero where a column is not this lane's tap).
        e = None
        for o in range(S):
            t = logits[0, c, yi, tirx.min(base + o, w - 1)] * coef[o, x]
            e = t if e is None else e + t
        return e

    @T.macro
    def chunk(logits, present, hrow, best, idx, coef, X0, X1, WX0, WX1, Y0, Y1, WY0, WY1, y_base, xb, yb, nr, k0, n):
        for kk in range(n):
            # ``T.let``, not ``c = ...``: a plain assignment becomes a one-element buffer,
            # which VectorizeLoop silently miscompiles inside vectorized loops.
            c: T.let = present[k0 + kk]
            for r in range(nr):
                for xo in range(TW // VW):
                    base: T.let = X0[xb + xo * VW]
                    for xi in T.vectorized(VW):
                        hrow[kk, r, xo * VW + xi] = hlerp(
                            logits, c, yb + r, base, coef, X0, X1, WX0, WX1, xb + xo * VW + xi
                        )
        for yy in range(TH):
            # Clamped so that a mismatch with the static bounds can never read out of hrow.
            r0: T.let = T.min(Y0[y_base + yy] - yb, R - 1)
            r1: T.let = T.min(Y1[y_base + yy] - yb, R - 1)
            wy0: T.let = WY0[y_base + yy]
            wy1: T.let = WY1[y_base + yy]
            for xo in range(TW // VW):
                bv = T.alloc_buffer((VW,), "float32", scope="local")
                iv = T.alloc_buffer((VW,), "int32", scope="local")
                for xi in T.vectorized(VW):
                    bv[xi] = best[yy, xo * VW + xi]
                    iv[xi] = idx[yy, xo * VW + xi]
                for kk in T.unroll(n):
                    # idx before best: strict '>' keeps the first max, as torch.argmax.
                    for xi in T.vectorized(VW):
                        iv[xi] = T.Select(
                            hrow[kk, r0, xo * VW + xi] * wy0 + hrow[kk, r1, xo * VW + xi] * wy1 > bv[xi],
                            T.Cast("int32", k0 + kk),
                            iv[xi],
                        )
                        bv[xi] = T.max(hrow[kk, r0, xo * VW + xi] * wy0 + hrow[kk, r1, xo * VW + xi] * wy1, bv[xi])
                for xi in T.vectorized(VW):
                    best[yy, xo * VW + xi] = bv[xi]
                    idx[yy, xo * VW + xi] = iv[xi]

    # K % KC leftover channels run as chunks of KC/2, KC/4, ..., 1 (each at most once).
    tails = [KC >> i for i in range(1, KC.bit_length())]

    @T.prim_func
    def vim(logits: T.Buffer((1, C, h, w), "float32"), p: T.handle, out: T.Buffer((1, H, W), "int32")):
        T.func_attr({"tirx.noalias": True})
        K = T.int64()
        present = T.match_buffer(p, (K,), "int64")
        Y0 = T.alloc_buffer((H,), "int32")
        Y1 = T.alloc_buffer((H,), "int32")
        WY0 = T.alloc_buffer((H,), "float32")
        WY1 = T.alloc_buffer((H,), "float32")
        X0 = T.alloc_buffer((W,), "int32")
        X1 = T.alloc_buffer((W,), "int32")
        WX0 = T.alloc_buffer((W,), "float32")
        WX1 = T.alloc_buffer((W,), "float32")
        coef = T.alloc_buffer((S if windowed else 1, W), "float32")
        # Taps and weights once per call: src = max((dst + 0.5) * in/out - 0.5, 0).
        for y in range(H):
            sv: T.let = T.max((T.Cast("float32", y) + T.float32(0.5)) * T.float32(sy) - T.float32(0.5), T.float32(0))
            i0: T.let = T.Cast("int32", T.floor(sv))
            Y0[y] = i0
            Y1[y] = T.min(i0 + 1, h - 1)
            WY1[y] = sv - T.Cast("float32", i0)
            WY0[y] = T.float32(1) - (sv - T.Cast("float32", i0))
        for x in range(W):
            sv: T.let = T.max((T.Cast("float32", x) + T.float32(0.5)) * T.float32(sx) - T.float32(0.5), T.float32(0))
            i0: T.let = T.Cast("int32", T.floor(sv))
            X0[x] = i0
            X1[x] = T.min(i0 + 1, w - 1)
            WX1[x] = sv - T.Cast("float32", i0)
            WX0[x] = T.float32(1) - (sv - T.Cast("float32", i0))
        if windowed:
            for x, o in T.grid(W, S):
                coef[o, x] = T.Select(X0[x] - X0[x - x % VW] == o, WX0[x], T.float32(0)) + T.Select(
                    X1[x] - X0[x - x % VW] == o, WX1[x], T.float32(0)
                )
        for t in T.parallel(NT_Y * NT_X):
            hrow = T.alloc_buffer((KC, R, TW), "float32")
            best = T.alloc_buffer((TH, TW), "float32")
            idx = T.alloc_buffer((TH, TW), "int32")
            ty: T.let = t // NT_X
            y_base: T.let = T.min(ty * TH, H - TH)
            xb: T.let = t % NT_X * TW
            yb: T.let = Y0[y_base]
            nr: T.let = T.min(Y1[y_base + TH - 1] - yb + 1, R)
            for yy, xx in T.grid(TH, TW):
                best[yy, xx] = T.float32("-inf")
                idx[yy, xx] = 0
            for kc in range(K // KC):
                chunk(logits, present, hrow, best, idx, coef, X0, X1, WX0, WX1, Y0, Y1, WY0, WY1,
                      y_base, xb, yb, nr, kc * KC, KC)  # fmt: skip
            # Tails, largest first: the size-n one runs iff bit n of K % KC is set.
            if len(tails) > 0:
                if K % (tails[0] * 2) >= tails[0]:
                    chunk(logits, present, hrow, best, idx, coef, X0, X1, WX0, WX1, Y0, Y1, WY0, WY1,
                          y_base, xb, yb, nr, K - K % (tails[0] * 2), tails[0])  # fmt: skip
            if len(tails) > 1:
                if K % (tails[1] * 2) >= tails[1]:
                    chunk(logits, present, hrow, best, idx, coef, X0, X1, WX0, WX1, Y0, Y1, WY0, WY1,
                          y_base, xb, yb, nr, K - K % (tails[1] * 2), tails[1])  # fmt: skip
            if len(tails) > 2:
                if K % (tails[2] * 2) >= tails[2]:
                    chunk(logits, present, hrow, best, idx, coef, X0, X1, WX0, WX1, Y0, Y1, WY0, WY1,
                          y_base, xb, yb, nr, K - K % (tails[2] * 2), tails[2])  # fmt: skip
            if len(tails) > 3:
                if K % (tails[3] * 2) >= tails[3]:
                    chunk(logits, present, hrow, best, idx, coef, X0, X1, WX0, WX1, Y0, Y1, WY0, WY1,
                          y_base, xb, yb, nr, K - K % (tails[3] * 2), tails[3])  # fmt: skip
            for yy in range(TH):
                if not guard_rows or y_base + yy >= ty * TH:  # shifted last tile: own rows only
                    for xx in T.vectorized(TW):
                        out[0, y_base + yy, xb + xx] = T.Cast("int32", present[idx[yy, xx]])

    return vim


def build_vim(
    C: int,
    h: int,
    w: int,
    H: int,
    W: int,
    target: tvm.target.Target | None = None,
    schedule: VimSchedule | None = None,
) -> tvm.runtime.Module:
    """The fused kernel alone, compiled; call it as ``mod["vim"](logits, present, out)``."""
    func = vim_primfunc(C, h, w, H, W, schedule)
    if target is None:
        target = load_profile("host").tvm_target()
    return tvm.compile(tvm.IRModule({VIM_FUNC_NAME: func}), target=target).jit()


def _static_shape(expr: relax.Expr) -> tuple[int, ...]:
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        raise ValueError(f"expected a tensor of known shape, got {ty}")
    try:
        return tuple(int(v) for v in ty.shape.values)
    except TypeError as err:
        raise ValueError(f"logits need a static shape, got {ty.shape}") from err


def _as_var(bb: relax.BlockBuilder, expr: relax.Expr) -> relax.Expr:
    """Bind a not-yet-normalized expression (e.g. a call) so that its type is known."""
    return expr if isinstance(expr, relax.Var) else bb.emit(expr)


def _logits_dims(logits: relax.Expr) -> tuple[int, int, int]:
    shape = _static_shape(logits)
    if len(shape) != 4 or shape[0] != 1:
        raise ValueError(f"VIM takes logits [1, C, h, w], got {list(shape)}")
    return shape[1], shape[2], shape[3]


def argmax_primfunc(C: int, h: int, w: int) -> tirx.PrimFunc:
    """``argmax(logits[1, C, h, w], axis=1) -> int64 [1, h, w]``, first max on ties.

    The stock legalized argmax walks channels innermost (stride h*w) without vectors
    and costs ~6x the fused kernel at K=10; this one streams rows of each channel.
    """
    VW = next(v for v in (16, 8, 4, 2, 1) if w % v == 0)

    @T.prim_func(s_tir=True)
    def argmax(logits: T.Buffer((1, C, h, w), "float32"), out: T.Buffer((1, h, w), "int64")):
        T.func_attr({"tirx.noalias": True})
        # A root block: Relax's reshape-pattern check (one input, one output) requires one.
        with T.sblock("root"):
            for y in T.parallel(h):
                for xo in range(w // VW):
                    bv = T.alloc_buffer((VW,), "float32", scope="local")
                    iv = T.alloc_buffer((VW,), "int32", scope="local")
                    for xi in T.vectorized(VW):
                        bv[xi] = logits[0, 0, y, xo * VW + xi]
                        iv[xi] = 0
                    for c in range(1, C):
                        for xi in T.vectorized(VW):
                            iv[xi] = T.Select(logits[0, c, y, xo * VW + xi] > bv[xi], c, iv[xi])
                            bv[xi] = T.max(logits[0, c, y, xo * VW + xi], bv[xi])
                    for xi in T.vectorized(VW):
                        out[0, y, xo * VW + xi] = T.Cast("int64", iv[xi])

    return argmax


# Marks this project's hand-written kernels: tuning leaves them alone and
# MetaSchedule's database is never applied to them.
HAND_SCHEDULED = "tirx.is_scheduled"


def hand_scheduled(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` marked as one of this project's hand-written kernels, and opaque (kOpaque) to
    FuseOps/FuseTIR, which would otherwise fuse it with its neighbours into a new kernel.
    TVMScript's symbol (the Python function's name) is dropped: the kernel takes the name it
    is added under, so each entry of a library with several input sizes has its own."""
    return func.without_attr("global_symbol").with_attr("op_pattern", 8).with_attr(HAND_SCHEDULED, True)


def presence_primfunc(C: int, h: int, w: int) -> tirx.PrimFunc:
    """``winners[1, h, w]`` (class ids) to the sorted ids present, padded to ``[C]``,
    and their count ``K`` (``[1]``): ``unique`` without a run-time helper.

    Relax's ``unique`` lowers to ``relax.run.unique``, a function TVM registers from
    Python only, so a library using it cannot run under the C++ runtime (a phone's
    RPC server, the native runner). This kernel keeps VIM native.
    """

    @T.prim_func(s_tir=True)
    def presence(winners: T.Buffer((1, h, w), "int64"), present: T.Buffer((C,), "int64"),
                 count: T.Buffer((1,), "int64")):
        T.func_attr({"tirx.noalias": True})
        with T.sblock("root"):
            seen = T.alloc_buffer((C,), "int8")
            n = T.alloc_buffer((1,), "int64")
            for c in range(C):
                seen[c] = T.int8(0)
                present[c] = T.int64(0)
            for y in range(h):
                for x in range(w):
                    seen[winners[0, y, x]] = T.int8(1)
            n[0] = T.int64(0)
            for c in range(C):
                if seen[c] == T.int8(1):
                    present[n[0]] = T.Cast("int64", c)
                    n[0] = n[0] + T.int64(1)
            count[0] = n[0]

    return presence


def _present_classes(bb: relax.BlockBuilder, logits: relax.Expr, stock_argmax: bool = False) -> relax.Var:
    """The sorted class ids that win somewhere in the low-resolution argmax, as a tensor
    whose run-time length is the named symbolic ``K`` (take / call_tir / VM codegen
    need the name)."""
    C, h, w = _logits_dims(logits)
    if stock_argmax:
        winners = bb.emit(relax.op.argmax(logits, axis=1))
    else:
        gv = bb.add_func(hand_scheduled(argmax_primfunc(C, h, w)), f"argmax_{C}x{h}x{w}")
        winners = bb.emit(relax.call_tir(gv, [logits], relax.TensorType((1, h, w), "int64")))
    gv = bb.add_func(hand_scheduled(presence_primfunc(C, h, w)), f"presence_{C}x{h}x{w}")
    found = bb.emit(relax.call_tir(gv, [winners], [relax.TensorType((C,), "int64"), relax.TensorType((1,), "int64")]))
    padded, count = bb.emit(relax.TupleGetItem(found, 0)), bb.emit(relax.TupleGetItem(found, 1))
    K = tirx.Var("K", "int64")
    bb.match_cast(bb.emit(relax.op.tensor_to_shape(count)), relax.ShapeType([K]))
    # take(padded, arange(K)) rather than strided_slice: the latter's legalization with a
    # symbolic end leaves a prim.if_then_else that FuseOps cannot re-normalize.
    return bb.emit(relax.op.take(padded, relax.op.arange(0, K, 1, "int64"), axis=0))


def emit_vim(
    bb: relax.BlockBuilder,
    logits: relax.Expr,
    out_hw: Sequence[int],
    schedule: VimSchedule | None = None,
    stock_argmax: bool = False,
) -> relax.Var:
    """Emit argmax -> unique -> match_cast -> fused kernel; returns int32 labels [1, H, W].

    The argmax is ``argmax_primfunc`` unless ``stock_argmax`` (``relax.op.argmax``).
    """
    logits = _as_var(bb, logits)
    C, h, w = _logits_dims(logits)
    H, W = (int(v) for v in out_hw)
    gv = bb.add_func(hand_scheduled(vim_primfunc(C, h, w, H, W, schedule)), f"{VIM_FUNC_NAME}_{C}x{h}x{w}_{H}x{W}")
    present = _present_classes(bb, logits, stock_argmax)
    return bb.emit(relax.call_tir(gv, [logits, present], relax.TensorType((1, H, W), "int32")))


def emit_vim_unfused(
    bb: relax.BlockBuilder,
    logits: relax.Expr,
    out_hw: Sequence[int],
    present: relax.Expr | None = None,
) -> relax.Var:
    """VIM from stock Relax ops (take, resize2d, argmax, take): the baseline for the kernel.
    ``present`` (int64 [K]) defaults to ``unique(argmax(logits, 1))``."""
    logits = _as_var(bb, logits)
    _logits_dims(logits)
    H, W = (int(v) for v in out_hw)
    if present is None:
        present = _present_classes(bb, logits)
    valid = bb.emit(relax.op.take(logits, present, axis=1))
    up = bb.emit(relax.op.image.resize2d(valid, (H, W), method="linear", coordinate_transformation_mode="half_pixel"))
    winners = bb.emit(relax.op.argmax(up, axis=1))
    labels = bb.emit(relax.op.take(present, winners, axis=0))
    return bb.emit(relax.op.astype(labels, "int32"))


def emit_interpolate(bb: relax.BlockBuilder, logits: relax.Expr, out_hw: Sequence[int],
                     schedule: VimSchedule | None = None) -> relax.Var:
    """Upsample all channels (half-pixel bilinear = torch ``align_corners=False``), then argmax:
    the fused VIM kernel with every class present, so no full-size logits are written."""
    logits = _as_var(bb, logits)
    C, h, w = _logits_dims(logits)
    H, W = (int(v) for v in out_hw)
    gv = bb.add_func(hand_scheduled(vim_primfunc(C, h, w, H, W, schedule)), f"{VIM_FUNC_NAME}_{C}x{h}x{w}_{H}x{W}")
    every = bb.emit(relax.op.arange(0, C, 1, "int64"))
    return bb.emit(relax.call_tir(gv, [logits, every], relax.TensorType((1, H, W), "int32")))


def emit_interpolate_stock(bb: relax.BlockBuilder, logits: relax.Expr, out_hw: Sequence[int]) -> relax.Var:
    """The same from stock Relax ops (resize2d of all channels, argmax): the baseline, whose
    resize MetaSchedule finds a single candidate for."""
    logits = _as_var(bb, logits)
    _static_shape(logits)
    H, W = (int(v) for v in out_hw)
    up = bb.emit(relax.op.image.resize2d(logits, (H, W), method="linear", coordinate_transformation_mode="half_pixel"))
    return bb.emit(relax.op.astype(relax.op.argmax(up, axis=1), "int32"))


_EMITTERS = {
    "vim": emit_vim,
    "vim-stock-argmax": lambda bb, logits, hw: emit_vim(bb, logits, hw, stock_argmax=True),
    "vim-unfused": emit_vim_unfused,
    "interpolate": emit_interpolate,
    "interpolate-stock": emit_interpolate_stock,
}


def labels_module(C: int, h: int, w: int, H: int, W: int, mode: str = "vim") -> tvm.IRModule:
    """A Relax module ``main(logits[1, C, h, w] f32) -> labels[1, H, W] i32``.

    ``mode``: ``vim`` (fused kernel), ``vim-stock-argmax`` (same, ``relax.op.argmax`` for the
    low-resolution argmax), ``vim-unfused`` (stock ops), ``interpolate`` (the fused kernel over
    every class) or ``interpolate-stock`` (stock ops).
    """
    if mode not in _EMITTERS:
        raise ValueError(f"mode must be one of {sorted(_EMITTERS)}, got {mode!r}")
    bb = relax.BlockBuilder()
    logits = relax.Var("logits", relax.TensorType((1, C, h, w), "float32"))
    with bb.function("main", [logits]):
        with bb.dataflow():
            labels = bb.emit_output(_EMITTERS[mode](bb, logits, (H, W)))
        bb.emit_func_output(labels)
    return bb.get()
