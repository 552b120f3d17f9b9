"""What the graph passes share: recognizing an op, running a mutator over every Relax
function of a module, and a convolution's layouts."""

from __future__ import annotations

import tvm
from tvm import relax


def is_op(expr: relax.Expr, name: str) -> bool:
    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == name


def function_pass(mutator: type, name: str) -> tvm.transform.Pass:
    """A module pass applying ``mutator`` to every Relax function."""
    @tvm.transform.module_pass(opt_level=0, name=name)
    def run(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        rewriter = mutator(mod)
        for gv, func in mod.functions.items():
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
        return rewriter.builder_.get()

    return run


def layouts_of(call: relax.Call) -> tuple[str, str, str]:
    """A conv2d's data, kernel and output layout."""
    attrs = call.attrs
    return attrs.data_layout, attrs.kernel_layout, attrs.out_layout


def plain_layouts(call: relax.Call) -> bool:
    """Whether a conv2d reads NCHW data and OIHW weights and writes NCHW."""
    return layouts_of(call) == ("NCHW", "OIHW", "NCHW")
