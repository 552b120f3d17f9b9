"""The project's MetaSchedule templates on every kernel of Tiny and Base that uses them: the
blocked convolutions' (``schedules.blocked_conv``) and the fused inverted residual's
(``schedules.inverted_residual``, ``--fuse``). A candidate each designs passes MetaSchedule's
postprocessors, has a vectorized loop and computes what the default lowering computes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import tvm
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

from model.pp_mobileseg import build_model, get_config, make_divisible
from pipeline.compile.build import build_spec, import_network, with_tail
from pipeline.compile.passes import GraphOptions
from rpc.linkers import build_config
from schedules import blocked_conv, inverted_residual, tuning

SIZE = (64, 96)  # every kernel size, stride and channel count of 512x512, on a smaller image


def _tasks(name: str, graph: GraphOptions, rule: str) -> tuple[list, tvm.target.Target]:
    """The tasks of ``name`` built with ``graph`` whose kernels carry the schedule rule ``rule``."""
    model = build_model(name)
    config = build_config("host", mode="local", threads=1, check_linker=False)
    spec = build_spec(name, model, SIZE, config, None, graph=graph)
    target = tvm.target.Target(spec.target)
    network = with_tail(import_network(model, spec.input_shape, "torch", None), spec)
    return [t for t in tuning.extract_tasks(network, target)
            if f'"schedule_rule": "{rule}"' in t.dispatched[0].script()], target


def _run(lib: tvm.runtime.Module, args: list[np.ndarray]) -> list[np.ndarray]:
    arrays = [tvm.runtime.tensor(a) for a in args]
    lib["main"](*arrays)
    return [a.numpy() for a in arrays]


def _check_candidates(tasks: list, target: tvm.target.Target,
                      check: Callable[[tvm.IRModule], bool] = lambda _mod: True) -> None:
    """One candidate of each task's design space: postprocessed, vectorized, ``check``ed,
    and equal to the default lowering on random inputs."""
    rng = np.random.default_rng(0)
    for task in tasks:
        mod = task.dispatched[0]
        context = ms.TuneContext(mod=mod, target=target, space_generator="post-order-apply",
                                 task_name=task.task_name, rand_state=1)
        (sch,) = context.space_generator.generate_design_space(mod)
        assert all(p.apply(sch) for p in context.space_generator.postprocs), task.task_name
        assert "T.vectorized" in sch.mod.script() and check(sch.mod), task.task_name
        args = [rng.standard_normal(a.shape).astype(a.dtype) for a in ms.arg_info.ArgInfo.from_prim_func(mod["main"])]
        scheduled = tvm.compile(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(sch.mod), target=target)
        for got, want in zip(_run(scheduled, args), _run(tvm.compile(mod, target=target), args), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=task.task_name)


@pytest.mark.parametrize("name", ["tiny", "base"])
def test_blocked_conv_template_candidates_compute_the_default_result(name):
    tasks, target = _tasks(name, GraphOptions(fused=False), blocked_conv.SCHEDULE_RULE)
    assert len(tasks) > 40  # every dense, depthwise and widening convolution
    _check_candidates(tasks, target)


def _expansion_per_tile(mod: tvm.IRModule) -> bool:
    """Whether the expansion is computed inside the depthwise convolution's loops (per tile),
    not whole before it."""
    sch = tvm.s_tir.Schedule(mod)

    def loops(name: str) -> set:
        try:
            block = sch.get_sblock(name)
        except tvm.s_tir.ScheduleError:  # a reduction split into init and update by a postprocessor
            block = sch.get_sblock(f"{name}_update")
        return {sch.get(loop) for loop in sch.get_loops(block)}

    return bool(loops("expand_NCHWc") & loops("expand_depthwise_NCHWc"))


@pytest.mark.parametrize("name", ["tiny", "base"])
def test_fused_inverted_residual_template_candidates_compute_the_default_result(name):
    tasks, target = _tasks(name, GraphOptions(fused=True), inverted_residual.SCHEDULE_RULE)
    # at least one task per distinct (expansion, kernel, stride, activation) of the units
    units = [unit for stage in get_config(name).backbone.stages for unit in stage]
    assert len(tasks) >= len({(make_divisible(u.expand), u.kernel, u.stride, u.act) for u in units})
    _check_candidates(tasks, target, _expansion_per_tile)
