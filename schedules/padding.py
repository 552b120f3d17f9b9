"""Where a tuned convolution computes the zero padding of its input.

A convolution with padding reads a padded copy of its input (TOPI's ``PadInput`` or
``pad_temp`` block). MetaSchedule decides where that copy is computed: inlined into the
convolution's reads, per tile inside the convolution's loops (a few rows or one channel
block, which stay in cache), or whole, the padded input written in full before the
convolution starts: a second pass over memory that the tuning report points out.
"""

from __future__ import annotations

from pathlib import Path

import tvm
from tvm.s_tir.schedule import Schedule

from schedules.tuning import best_modules

PAD_BLOCKS = ("PadInput", "pad_temp")  # topi.nn.pad's and TOPI conv2d's padding blocks
INLINED, PER_TILE, WHOLE = "inlined", "per tile", "whole"


def _pad_block(sch: Schedule):  # noqa: ANN202 - an SBlockRV or None
    for name in PAD_BLOCKS:
        try:
            return sch.get_sblock(name)
        except tvm.s_tir.ScheduleError:
            continue
    return None


def padding_placement(task_mod: tvm.IRModule, tuned_mod: tvm.IRModule | None) -> str | None:
    """``INLINED``, ``PER_TILE`` or ``WHOLE`` for a task whose kernel pads its input (as
    ``tuned_mod`` schedules it), None for a task without padding or without a tuned schedule."""
    if tuned_mod is None or _pad_block(Schedule(task_mod)) is None:
        return None
    sch = Schedule(tuned_mod)
    pad = _pad_block(sch)
    if pad is None:
        return INLINED
    inside = {sch.get(loop) for loop in sch.get_loops(pad)}
    readers = sch.get_consumers(pad)
    shared = any(sch.get(loop) in inside for reader in readers for loop in sch.get_loops(reader))
    return PER_TILE if shared else WHOLE


def padding_placements(tasks: list, target: tvm.target.Target, work_dir: str | Path) -> dict[str, str]:
    """``padding_placement`` of every task that pads its input and has a tuned schedule in
    ``work_dir``'s database, by task name."""
    placements = {t.task_name: padding_placement(t.dispatched[0], tuned)
                  for t, tuned in zip(tasks, best_modules(tasks, target, work_dir), strict=True)}
    return {name: where for name, where in placements.items() if where is not None}
