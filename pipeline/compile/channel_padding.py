"""Zero channels that let a convolution whose output channels do not fill blocks run blocked.

Two ways, chosen per convolution (``pad_output_channels``):

- **sliced back**: zero filters up to a block multiple, the output sliced back to its
  channels (the 150-class classifier: 160 filters). Allowed where it adds at most an eighth
  of the work, because the slice unblocks the result.
- **carried**: zero filters, and the padded channels flow on to every use: element-wise ops
  with constants (whose channel vectors get zeros) and dense convolutions with constant
  weights (which get zero input channels, so the padding adds nothing to their result).
  Nothing is sliced, so no tensor between the two convolutions is ever unblocked: Tiny's
  stage-1 projection to 24 channels, which otherwise stayed NCHW and cost a 0.4 ms
  transpose of its 48-channel input. Allowed where it adds at most half of the work.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from pipeline.compile.rewriting import function_pass, is_op, plain_layouts
from schedules.blocked_conv import CONV2D, MAX_TILE

# Element-wise ops whose padded channels stay finite when their constants get zeros there.
_ELEMENTWISE = ("relax.add", "relax.subtract", "relax.multiply", "relax.maximum", "relax.minimum", "relax.nn.relu")


def _elementwise(expr: relax.Expr) -> bool:
    return any(is_op(expr, name) for name in _ELEMENTWISE)


def _constant_weight(call: relax.Call) -> bool:
    return plain_layouts(call) and call.attrs.groups == 1 and isinstance(call.args[1], tvm.ir.expr.Constant)


def _padding_to_block(call: relax.Call, block: int, bound: int) -> int:
    """Zero filters that make a dense NCHW convolution's output channels fill blocks: 0
    unless its input channels fill blocks, its weight is a constant and the padding adds at
    most ``1/bound`` of the work. Where that bound allows, the output blocks become a
    multiple of the template's largest output-block tile, because a prime block count
    (152 = 19 x 8) leaves the search only a tile of 1: the 150-class classifier gets 160
    filters, an SE squeeze to 60 gets 64, a squeeze to 4 gets none."""
    if not _constant_weight(call):
        return 0
    c, o = int(call.args[0].ty.shape[1]), int(call.args[1].ty.shape[0])
    if c % block or o % block == 0:
        return 0
    extras = (-o % (block * MAX_TILE["o"]), -o % block)
    return next((extra for extra in extras if bound * extra <= o), 0)


def _channel_constant(expr: relax.Expr | None) -> bool:
    """A scalar constant or a ``[1, C, 1, 1]`` one (a bias, a folded batch-norm scale)."""
    if not isinstance(expr, tvm.ir.expr.Constant):
        return False
    shape = [int(d) for d in expr.ty.shape]
    return len(shape) == 0 or (len(shape) == 4 and shape[0] == shape[2] == shape[3] == 1)


class _Uses:
    """Each dataflow variable of a function: its bound value and the variables bound to its uses."""

    def __init__(self, func: relax.Function) -> None:
        self.values: dict[relax.Var, relax.Expr] = {}
        self.users: dict[relax.Var, list[relax.Var]] = {}
        for block in func.body.blocks:
            if isinstance(block, relax.DataflowBlock):
                self.values.update((b.var, b.value) for b in block.bindings)
                self.users.update(relax.analysis.udchain(block))

    def carry_padding(self, var: relax.Var) -> bool:
        """Whether zero channels appended to ``var`` can flow to every use of it without
        changing any result the function returns."""
        users = self.users.get(var, [])
        return isinstance(var, relax.DataflowVar) and bool(users) and all(
            self._carries(var, user, self.values.get(user)) for user in users)

    def _carries(self, var: relax.Var, user: relax.Var, value: relax.Expr | None) -> bool:
        if not isinstance(value, relax.Call) or not value.args or not value.args[0].same_as(var):
            return False
        if is_op(value, CONV2D):
            return _constant_weight(value)
        return (_elementwise(value)
                and all(_channel_constant(self.constant(a)) for a in value.args[1:]) and self.carry_padding(user))

    def constant(self, expr: relax.Expr) -> relax.Expr:
        """``expr``, or the constant a variable is bound to (a bias after ``fold_weight_layouts``)."""
        return self.values.get(expr, expr) if isinstance(expr, relax.Var) else expr


def _zeros_after(value: np.ndarray, axis: int, size: int) -> tvm.ir.expr.Constant:
    """``value`` with zeros appended on ``axis`` up to ``size``."""
    pad = [(0, 0)] * value.ndim
    pad[axis] = (0, size - value.shape[axis])
    return relax.const(np.pad(value, pad))


@relax.expr_functor.mutator
class _PadOutputChannels(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, block: int) -> None:
        super().__init__(mod)
        self.block = block
        self.carried: set[relax.Call] = set()

    def visit_function_(self, func: relax.Function) -> relax.Expr:
        uses = _Uses(func)
        self.carried = {value for var, value in uses.values.items() if is_op(value, CONV2D)
                        and _padding_to_block(value, self.block, 2) and uses.carry_padding(var)}
        return super().visit_function_(func)

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        new = self._take_padded_input(call, [self.visit_expr(arg) for arg in call.args])
        if not is_op(new, CONV2D):
            return new
        weight = new.args[1].value.numpy() if isinstance(new.args[1], tvm.ir.expr.Constant) else None
        if call in self.carried:
            filters = weight.shape[0] + _padding_to_block(new, self.block, 2)
            return relax.Call(new.op, [new.args[0], _zeros_after(weight, 0, filters)], new.attrs)
        if not (extra := _padding_to_block(new, self.block, 8)):
            return new
        padded = self.builder_.emit(relax.Call(
            new.op, [new.args[0], _zeros_after(weight, 0, weight.shape[0] + extra)], new.attrs))
        return relax.op.strided_slice(padded, axes=[1], begin=[0], end=[weight.shape[0]])

    def _take_padded_input(self, call: relax.Call, args: list[relax.Expr]) -> relax.Expr:
        """``call`` with its visited ``args``; where the first is a carried convolution's
        output, a dense convolution's weight gets zero input channels and an element-wise
        op's channel vectors get zeros, up to its channels (a well-typed graph has no such
        mismatch, so nothing else changes)."""
        first = args[0].ty if args else None
        dense = is_op(call, CONV2D) and call.attrs.groups == 1
        if isinstance(first, relax.TensorType) and first.ndim == 4 and (
                dense or _elementwise(call)):
            args = [args[0], *(self._widened(arg, int(first.shape[1]), dense) for arg in args[1:])]
        if all(a.same_as(b) for a, b in zip(args, call.args, strict=True)):
            return call
        return relax.Call(call.op, args, call.attrs, call.ty_args)

    def _widened(self, arg: relax.Expr, channels: int, dense: bool) -> relax.Expr:
        """A 4-D constant (or a variable bound to one) with fewer than ``channels`` on axis 1,
        zeros appended; a channel vector of 1 broadcasts and stays; anything else as it is."""
        value = self.lookup_binding(arg) if isinstance(arg, relax.Var) else arg
        if not isinstance(value, tvm.ir.expr.Constant) or value.ty.ndim != 4:
            return arg
        have = int(value.ty.shape[1])
        return _zeros_after(value.value.numpy(), 1, channels) if (dense or have > 1) and have < channels else arg


def pad_output_channels(block: int) -> tvm.transform.Pass:
    """Convolutions whose output channels do not fill blocks get zero filters, sliced back or
    carried (this module's docstring)."""
    return function_pass(lambda mod: _PadOutputChannels(mod, block), "PadOutputChannels")
