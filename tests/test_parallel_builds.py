"""Builds in threads at once (``in_parallel``, as ``make tune`` builds its libraries):
legalization runs TOPI's computes, which share one process-wide tag scope. Before the
builds took turns there, four of these failed with "nested op_tag" every time."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.script import relax as R

from pipeline.compile.build import build_library, in_parallel

LAYERS = 24


def _convs() -> tvm.IRModule:
    """NCHW convolutions and pooling, legalized by TVM's own TOPI computes (tagged)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", R.Tensor((1, 8, 16, 16), "float32"))
    w = relax.const(np.full((8, 8, 3, 3), 0.01, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = x
            for _ in range(LAYERS):
                y = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(y, w, padding=1)))
                y = bb.emit(relax.op.nn.max_pool2d(y, pool_size=3, padding=1))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def test_builds_in_threads_do_not_collide():
    mod = _convs()
    built = in_parallel({str(i): lambda: build_library(mod, {"kind": "llvm"}) for i in range(4)})
    x = np.random.default_rng(0).standard_normal((1, 8, 16, 16)).astype("float32")
    outputs = []
    for executable in built.values():
        vm = relax.VirtualMachine(executable, tvm.cpu())
        outputs.append(vm["main"](tvm.runtime.tensor(x)).numpy())
    assert outputs[0].shape == (1, 8, 16, 16) and np.abs(outputs[0]).sum() > 0
    for out in outputs[1:]:
        np.testing.assert_array_equal(out, outputs[0])
