"""``schedules.padding``: where a scheduled convolution computes its input's zero padding,
on a stride-2 depthwise convolution scheduled by hand in each of the three ways."""

from __future__ import annotations

import pytest
import tvm
from tvm import te
from tvm.s_tir.schedule import Schedule

from schedules.blocked_conv import depthwise_conv2d_nchwc
from schedules.padding import INLINED, PER_TILE, WHOLE, padding_placement


def _depthwise(padding: int) -> tvm.IRModule:
    data = te.placeholder((1, 2, 16, 16, 8), name="data")
    kernel = te.placeholder((2, 1, 3, 3, 1, 8), name="kernel")
    out = depthwise_conv2d_nchwc(data, kernel, [2, 2], [padding] * 4, [1, 1], "float32")
    return tvm.IRModule({"main": te.create_prim_func([data, kernel, out])})


def _scheduled(mod: tvm.IRModule, how: str) -> tvm.IRModule:
    sch = Schedule(mod)
    pad = sch.get_sblock("PadInput")
    if how == INLINED:
        sch.compute_inline(pad)
    elif how == PER_TILE:  # the padded rows a tile of output rows reads, computed under that tile
        conv = sch.get_consumers(pad)[0]
        _n, _c, y, *_ = sch.get_loops(conv)
        sch.compute_at(pad, y)
    return sch.mod


@pytest.mark.parametrize("how", [INLINED, PER_TILE, WHOLE])
def test_placement_of_the_padding(how):
    mod = _depthwise(padding=1)
    assert padding_placement(mod, _scheduled(mod, how)) == how


def test_no_padding_or_no_schedule_has_no_placement():
    unpadded = _depthwise(padding=0)
    assert padding_placement(unpadded, unpadded) is None
    assert padding_placement(_depthwise(padding=1), None) is None
