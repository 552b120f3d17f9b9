"""The graph passes: how the imported network is rewritten before TVM's CPU pipeline, as
named steps that every build runs (``ppmseg compile``, the tuning job, the benchmark), so
that a tuning database made with some options applies to every build made with them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # TVM is imported only when passes are built: artifacts are checked without it
    import tvm


@dataclass(frozen=True)
class GraphOptions:
    """The defaults are what ships; switching one from its default keeps the other path for
    comparison."""

    blocked: bool = True  # convolutions on channel-blocked tensors (pipeline/compile/layout.py)
    fused: bool = False  # expansion fused into the depthwise convolution (pipeline/compile/fusion.py)

    def __post_init__(self) -> None:
        if self.fused and not self.blocked:
            raise ValueError("the fused inverted-residual kernel needs the blocked layout")

    @property
    def suffix(self) -> str:
        """What a tuning work directory's name adds for non-default options."""
        if not self.blocked:
            return "-nchw"
        return "" if self.fused == SHIPPED.fused else ("-fused" if self.fused else "-unfused")

    def make_args(self) -> str:
        """The ``make`` variables that select these options (empty for the defaults)."""
        return ("" if self.blocked else " LAYOUT=nchw") + (
            "" if self.fused == SHIPPED.fused or not self.blocked else f" FUSE={'on' if self.fused else 'off'}")

    def layout(self, block: int) -> str:
        """The activations' layout, as an artifact records it."""
        return f"NCHW{block}c" if self.blocked else "NCHW"


SHIPPED = GraphOptions()


def graph_passes(options: GraphOptions, block: int) -> list[tvm.transform.Pass]:
    """The named steps, in order: blocked layout, fusion, legalization (none for the NCHW graph)."""
    if not options.blocked:
        return []
    from tvm import relax

    from pipeline.compile.fusion import fuse_expand_depthwise
    from pipeline.compile.layout import blocked_layout_passes, legalize_blocked

    fusion = [fuse_expand_depthwise(block), relax.transform.DeadCodeElimination()] if options.fused else []
    return [*blocked_layout_passes(block), *fusion, *legalize_blocked()]


def rewrite(module: tvm.IRModule, options: GraphOptions, block: int) -> tvm.IRModule:
    """``module`` after the graph passes (unchanged with every option off)."""
    import tvm

    return tvm.transform.Sequential(graph_passes(options, block))(module)
