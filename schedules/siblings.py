"""Kernels that differ only in their shapes: the same TIR with other integer constants, such as
one convolution at two input sizes. A schedule tuned for one replays on its siblings (the
blocked kernels split their loops by inner factors, so outer extents follow the shape), which
is how a run at a new input size starts from the records of another size."""

from __future__ import annotations

import hashlib
import math
import re

import tvm
from tvm.s_tir import meta_schedule as ms

Shapes = list[list[int]]  # each argument's shape


def family(mod: tvm.IRModule) -> str:
    """What siblings share: the kernel's TVMScript with every number blanked, hashed."""
    text = re.sub(r"\d+", "#", mod["main"].script())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def arg_shapes(mod: tvm.IRModule) -> Shapes:
    return [[int(d) for d in a.shape] for a in ms.arg_info.ArgInfo.from_prim_func(mod["main"])]


SPATIAL = (2, 3)  # the axes an input size changes: H and W in NCHW and blocked NCHWc alike


def distance(a: Shapes, b: Shapes, free: tuple[int, ...] | None = SPATIAL) -> float:
    """How far apart two siblings' shapes are: the sum of |log| of each dimension's ratio (0:
    the same shapes; one side of two arguments 1.375x longer: 0.64). Infinite unless they differ
    only in the ``free`` axes (None: any axis)."""
    if len(a) != len(b) or any(len(x) != len(y) for x, y in zip(a, b, strict=True)):
        return math.inf
    if free is not None and any(x != y for sa, sb in zip(a, b, strict=True)
                                for i, (x, y) in enumerate(zip(sa, sb, strict=True)) if i not in free):
        return math.inf
    pairs = (xy for sa, sb in zip(a, b, strict=True) for xy in zip(sa, sb, strict=True))
    return sum(abs(math.log(max(x, 1) / max(y, 1))) for x, y in pairs)


def closest(shapes: Shapes, candidates: dict[str, Shapes], free: tuple[int, ...] | None = SPATIAL) -> str | None:
    """The key of the candidate whose shapes are nearest ``shapes``, differing only in the
    ``free`` axes (None if there is none)."""
    nearest, key = min(((distance(shapes, candidates[k], free), k) for k in candidates), default=(math.inf, None))
    return key if math.isfinite(nearest) else None
