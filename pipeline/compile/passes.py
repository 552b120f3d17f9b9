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
    """The defaults are what ships; turning one off keeps the old path for comparison."""

    blocked: bool = True  # convolutions on channel-blocked tensors (pipeline/compile/layout.py)

    @property
    def suffix(self) -> str:
        """What a tuning work directory's name adds for non-default options."""
        return "" if self.blocked else "-nchw"

    def layout(self, block: int) -> str:
        """The activations' layout, as an artifact records it."""
        return f"NCHW{block}c" if self.blocked else "NCHW"


SHIPPED = GraphOptions()


def graph_passes(options: GraphOptions, block: int) -> list[tvm.transform.Pass]:
    from pipeline.compile.layout import blocked_layout_passes

    return blocked_layout_passes(block) if options.blocked else []


def rewrite(module: tvm.IRModule, options: GraphOptions, block: int) -> tvm.IRModule:
    """``module`` after the graph passes (unchanged with every option off)."""
    import tvm

    return tvm.transform.Sequential(graph_passes(options, block))(module)
