"""Fusing each inverted residual's 1x1 expansion into its depthwise convolution: a blocked
depthwise ``conv2d`` whose input is an element-wise chain (bias, ReLU or hardswish) over a
blocked 1x1 ``conv2d`` becomes one call of ``schedules.inverted_residual``'s kernel, which
computes the expansion per tile of rows instead of writing it whole and reading it back.

Runs after the layout passes have put the convolutions and their weights in ``NCHW[b]c``
and before legalization; the expansion and its chain are left to dead-code elimination
(still computed if something else reads them).
"""

from __future__ import annotations

import tvm
from tvm import relax

from pipeline.compile.layout import kind_layouts
from pipeline.compile.rewriting import function_pass, is_op, layouts_of
from schedules.blocked_conv import CONV2D, out_dtype
from schedules.inverted_residual import BINARY, Chain, expand_depthwise_nchwc

# The importer's element-wise ops that a chain may hold, by the kernel's name for them.
ELEMENTWISE = {f"relax.{op}": op for op in BINARY} | {"relax.nn.relu": "relu"}


def _is_depthwise(call: relax.Expr, block: int) -> bool:
    """A blocked depthwise convolution with a constant weight."""
    return (is_op(call, CONV2D) and layouts_of(call) == kind_layouts(block)["depthwise"]
            and all(int(d) == 1 for d in call.attrs.dilation) and isinstance(call.args[1], tvm.ir.expr.Constant))


def _is_expansion(call: relax.Expr, block: int) -> bool:
    """A 1x1 convolution to blocked channels (from blocked ones, or from too few channels
    for a block), stride 1, no padding, with a constant weight."""
    layouts = kind_layouts(block)
    return (is_op(call, CONV2D) and layouts_of(call) in (layouts["dense"], layouts["widen"]) and call.attrs.groups == 1
            and all(int(s) == 1 for s in call.attrs.strides) and not any(int(p) for p in call.attrs.padding)
            and [int(call.args[1].ty.shape[k]) for k in (2, 3)] == [1, 1]
            and isinstance(call.args[1], tvm.ir.expr.Constant))


@relax.expr_functor.mutator
class _FuseExpandDepthwise(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, block: int) -> None:
        super().__init__(mod)
        self.block = block

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        if not _is_depthwise(call, self.block):
            return call
        found: dict[str, relax.Call] = {}
        consts: list[relax.Constant] = []
        chain = self._chain(call.args[0], found, consts, [int(d) for d in call.args[0].ty.shape])
        if chain is None or "expansion" not in found:
            return call
        expansion, attrs = found["expansion"], call.attrs
        return self.builder_.call_te(
            expand_depthwise_nchwc, expansion.args[0], expansion.args[1], call.args[1], consts, chain,
            [int(s) for s in attrs.strides], [int(p) for p in attrs.padding], out_dtype(call),
            primfunc_name_hint="expand_depthwise_NCHWc")

    def _chain(self, expr: relax.Expr, found: dict[str, relax.Call], consts: list[relax.Constant],
               shape: list[int]) -> Chain | None:
        """``expr`` as a ``Chain`` over one expansion convolution (recorded in ``found``), its
        tensor constants appended to ``consts``; None if it is anything else."""
        if isinstance(expr, relax.Var):
            expr = self.lookup_binding(expr)
        if isinstance(expr, tvm.ir.expr.Constant):
            return self._leaf(expr, consts, shape)
        if _is_expansion(expr, self.block):
            if not found.setdefault("expansion", expr).same_as(expr):
                return None
            return "x"
        if not isinstance(expr, relax.Call) or not isinstance(expr.op, tvm.ir.Op) or expr.op.name not in ELEMENTWISE:
            return None
        args = [self._chain(arg, found, consts, shape) for arg in expr.args]
        return None if any(a is None for a in args) else (ELEMENTWISE[expr.op.name], *args)

    @staticmethod
    def _leaf(const: relax.Constant, consts: list[relax.Constant], shape: list[int]) -> Chain | None:
        """A scalar as a float; a per-channel tensor ``[1, C/b, 1, 1, b]`` as a ``const`` leaf."""
        dims = [int(d) for d in const.ty.shape]
        if not dims:
            return float(const.value.numpy())
        if len(dims) != len(shape) or any(d not in (1, s) for d, s in zip(dims, shape, strict=True)):
            return None
        index = next((i for i, c in enumerate(consts) if c.same_as(const)), None)
        if index is None:
            consts.append(const)
            index = len(consts) - 1
        return ("const", index)


def fuse_expand_depthwise(block: int) -> tvm.transform.Pass:
    """Each blocked expansion + element-wise chain + depthwise convolution becomes one
    ``expand_depthwise_nchwc`` call."""
    return function_pass(lambda mod: _FuseExpandDepthwise(mod, block), "FuseExpandDepthwise")
