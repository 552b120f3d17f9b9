"""``schedules.padding``: where a scheduled convolution computes its input's zero padding,
on a stride-2 depthwise convolution scheduled by hand in each of the three ways."""

from __future__ import annotations

from pathlib import Path

import pytest
import tvm
from tvm import te
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.schedule import Schedule

from schedules.blocked_conv import depthwise_conv2d_nchwc
from schedules.padding import INLINED, PER_TILE, WHOLE, padding_placement, padding_placements

TARGET = tvm.target.Target({"kind": "llvm", "num-cores": 1})


def _depthwise(padding: int, blocks: int = 2) -> tvm.IRModule:
    data = te.placeholder((1, blocks, 16, 16, 8), name="data")
    kernel = te.placeholder((blocks, 1, 3, 3, 1, 8), name="kernel")
    out = depthwise_conv2d_nchwc(data, kernel, [2, 2], [padding] * 4, [1, 1], "float32")
    return tvm.IRModule({"main": te.create_prim_func([data, kernel, out])})


def _schedule(mod: tvm.IRModule, how: str) -> Schedule:
    sch = Schedule(mod)
    pad = sch.get_sblock("PadInput")
    if how == INLINED:
        sch.compute_inline(pad)
    elif how == PER_TILE:  # the padded rows a tile of output rows reads, computed under that tile
        conv = sch.get_consumers(pad)[0]
        _n, _c, y, *_ = sch.get_loops(conv)
        sch.compute_at(pad, y)
    return sch


def _scheduled(mod: tvm.IRModule, how: str) -> tvm.IRModule:
    return _schedule(mod, how).mod


@pytest.mark.parametrize("how", [INLINED, PER_TILE, WHOLE])
def test_placement_of_the_padding(how):
    mod = _depthwise(padding=1)
    assert padding_placement(mod, _scheduled(mod, how)) == how


def test_no_padding_or_no_schedule_has_no_placement():
    unpadded = _depthwise(padding=0)
    assert padding_placement(unpadded, unpadded) is None
    assert padding_placement(_depthwise(padding=1), None) is None


def test_placements_read_the_best_schedule_from_a_tuning_database(tmp_path: Path):
    """Two padded tasks and one without padding in a MetaSchedule database, each with a slower
    and a faster record: the placement is the faster record's, the unpadded task has none."""
    tasks = {"dw_whole": _depthwise(1), "dw_tile": _depthwise(1, blocks=3), "dw_unpadded": _depthwise(0)}
    db = ms.database.JSONDatabase(work_dir=str(tmp_path))
    for name, (slow, fast) in {"dw_whole": (PER_TILE, WHOLE), "dw_tile": (WHOLE, PER_TILE),
                               "dw_unpadded": (WHOLE, WHOLE)}.items():
        workload = db.commit_workload(tasks[name])
        for how, secs in ((slow, 2e-3), (fast, 1e-3)):
            sch = Schedule(tasks[name]) if name == "dw_unpadded" else _schedule(tasks[name], how)
            db.commit_tuning_record(ms.database.TuningRecord(sch.trace, workload, [secs], TARGET))
    extracted = [ms.ExtractedTask(name, mod, TARGET, [mod], 1) for name, mod in tasks.items()]
    assert padding_placements(extracted, TARGET, tmp_path) == {"dw_whole": WHOLE, "dw_tile": PER_TILE}
