"""The blocked convolutions' MetaSchedule template (``schedules.blocked_conv``) on every
blocked-convolution kernel of Tiny and Base: a candidate it designs passes MetaSchedule's
postprocessors, has a vectorized loop and computes what the default lowering computes."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

from model.pp_mobileseg import build_model
from pipeline.compile.build import build_spec, import_network, with_tail
from rpc.linkers import build_config
from schedules import tuning
from schedules.blocked_conv import SCHEDULE_RULE

SIZE = (64, 96)  # every kernel size, stride and channel count of 512x512, on a smaller image


def _annotated(func: tvm.tirx.PrimFunc) -> bool:
    return f'"schedule_rule": "{SCHEDULE_RULE}"' in func.script()


def _run(lib: tvm.runtime.Module, args: list[np.ndarray]) -> list[np.ndarray]:
    arrays = [tvm.runtime.tensor(a) for a in args]
    lib["main"](*arrays)
    return [a.numpy() for a in arrays]


@pytest.mark.parametrize("name", ["tiny", "base"])
def test_template_candidates_compute_the_default_result(name):
    model = build_model(name)
    config = build_config("host", mode="local", threads=1, check_linker=False)
    spec = build_spec(name, model, SIZE, config, None)
    target = tvm.target.Target(spec.target)
    network = with_tail(import_network(model, spec.input_shape, "torch", None), spec)
    tasks = [t for t in tuning.extract_tasks(network, target) if _annotated(t.dispatched[0]["main"])]
    assert len(tasks) > 40  # every dense, depthwise and widening convolution
    rng = np.random.default_rng(0)
    for task in tasks:
        mod = task.dispatched[0]
        context = ms.TuneContext(mod=mod, target=target, space_generator="post-order-apply",
                                 task_name=task.task_name, rand_state=1)
        (sch,) = context.space_generator.generate_design_space(mod)
        assert all(p.apply(sch) for p in context.space_generator.postprocs), task.task_name
        assert "T.vectorized" in sch.mod.script(), task.task_name
        args = [rng.standard_normal(a.shape).astype(a.dtype) for a in ms.arg_info.ArgInfo.from_prim_func(mod["main"])]
        scheduled = tvm.compile(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(sch.mod), target=target)
        for got, want in zip(_run(scheduled, args), _run(tvm.compile(mod, target=target), args), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=task.task_name)
