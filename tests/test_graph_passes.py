"""The channel-blocked layout's graph passes (``pipeline/compile/layout.py``) on small
graphs: which convolutions end up blocked, that no opaque layout transform is left, and
that the rewritten graph computes what the NCHW graph computes."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import tvm
from tvm import relax

from pipeline.compile.passes import SHIPPED, rewrite
from schedules import tuning
from schedules.blocked_conv import SCHEDULE_RULE

BLOCK = 8
TARGET = tvm.target.Target({"kind": "llvm", "num-cores": 1})


def _random_constant(rng: np.random.Generator, *shape: int) -> relax.Constant:
    return relax.const(rng.standard_normal(shape).astype("float32"))


def _conv_relu_conv(c: int, o: int, rng: np.random.Generator) -> tvm.IRModule:
    """``conv1x1(relu(conv3x3(x) + bias))``: ``c`` channels in, ``o`` out of the second."""
    const = functools.partial(_random_constant, rng)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, c, 11, 9), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, const(c, c, 3, 3), padding=[1, 1, 1, 1]))
            y = bb.emit(relax.op.nn.relu(relax.op.add(y, const(1, c, 1, 1))))
            out = bb.emit_output(relax.op.add(relax.op.nn.conv2d(y, const(o, c, 1, 1)), const(1, o, 1, 1)))
        bb.emit_func_output(out)
    return bb.get()


def _kernels(mod: tvm.IRModule) -> list[tvm.tirx.PrimFunc]:
    return [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]


def _output_blocks(kernel: tvm.tirx.PrimFunc) -> int:
    """Channel blocks a blocked convolution writes (its last parameter is ``NCHW[b]c``)."""
    return int(kernel.params[-1].ty.shape[1])


def _run(mod: tvm.IRModule, x: np.ndarray) -> np.ndarray:
    vm = relax.VirtualMachine(tuning.build(mod, TARGET), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


@pytest.mark.parametrize(("o", "blocks"), [(150, [2, 20]), (60, [2, 8]), (4, [2])])
def test_output_channels_are_padded_to_blocks_only_where_it_pays(o, blocks):
    """150 classes run blocked with 160 filters (20 blocks: a prime 19 would force an
    output-block tile of 1), 60 with 64; 4 stay NCHW (padding would double the work).
    ``blocks``: the output blocks of each blocked convolution, the 3x3 one first."""
    rng = np.random.default_rng(0)
    mod = _conv_relu_conv(16, o, rng)
    rewritten = rewrite(mod, SHIPPED, BLOCK)
    kernels = _kernels(rewritten)
    blocked = [k for k in kernels if f'"schedule_rule": "{SCHEDULE_RULE}"' in k.script()]
    assert sorted(_output_blocks(k) for k in blocked) == blocks
    assert not any("layout_transform" in k.script() for k in kernels)  # all fusible reshapes
    x = rng.standard_normal((1, 16, 11, 9)).astype("float32")
    got = _run(rewritten, x)
    assert got.shape == (1, o, 11, 9)
    want = _run(mod, x)
    # float32 sums of 144 terms in another order: equal to a few ulps of the largest value
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_a_blocked_global_mean_runs_the_hand_scheduled_kernel():
    """A squeeze-and-excitation's pooling (the mean over H and W of a blocked tensor) becomes
    ``schedules.blocked_mean``'s kernel, which tuning leaves alone and which computes the
    NCHW graph's mean; a mean over one axis keeps TVM's legalization."""
    from schedules.vim import HAND_SCHEDULED

    rng = np.random.default_rng(0)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 16, 12, 10), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(rng.standard_normal((16, 16, 1, 1)).astype("float32"))))
            pooled = bb.emit(relax.op.mean(y, axis=[2, 3], keepdims=True))
            rows = bb.emit(relax.op.mean(y, axis=[3], keepdims=True))
            out = bb.emit_output(relax.op.add(relax.op.multiply(y, pooled), rows))
        bb.emit_func_output(out)
    mod = bb.get()
    rewritten = rewrite(mod, SHIPPED, BLOCK)
    hand = [k for k in _kernels(rewritten) if k.attrs is not None and k.attrs.get(HAND_SCHEDULED, False)]
    assert [tuple(int(d) for d in k.params[0].ty.shape) for k in hand] == [(1, 2, 12, 10, BLOCK)]
    # Tuning sees the single-axis mean (fused with what follows) and not the hand-written one.
    assert [t.task_name for t in tuning.extract_tasks(rewritten, TARGET) if "mean" in t.task_name] == [
        "fused_mean_multiply_add"]
    data = rng.standard_normal((1, 16, 12, 10)).astype("float32")
    want = _run(mod, data)
    np.testing.assert_allclose(_run(rewritten, data), want, rtol=0, atol=1e-5 * np.abs(want).max())


def _expand_project_expand(c: int, o: int, rng: np.random.Generator, returned: bool) -> tvm.IRModule:
    """``conv1x1(relu(conv1x1(x) + b1) + b2)``-like chain: ``c`` channels projected to ``o``
    (which does not fill blocks), then expanded back to ``c``; ``returned``: the projection
    is also a result of the function, so its zero channels cannot be carried."""
    const = functools.partial(_random_constant, rng)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, c, 10, 12), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            bias = bb.emit(relax.op.reshape(const(o), [1, o, 1, 1]))  # as torch.export writes a bias
            y = bb.emit(relax.op.nn.relu(relax.op.add(relax.op.nn.conv2d(x, const(o, c, 1, 1)), bias)))
            y = bb.emit(relax.op.multiply(y, relax.const(np.float32(0.5))))
            z = relax.op.add(relax.op.nn.conv2d(y, const(c, o, 3, 3), padding=[1, 1, 1, 1]), const(1, c, 1, 1))
            out = bb.emit_output(relax.Tuple([z, y]) if returned else z)
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("returned", [False, True])
def test_zero_channels_are_carried_to_the_next_convolution(returned):
    """A projection to 12 channels (a block and a half) gets 16 filters and the convolution
    after it 4 zero input channels, so both run blocked and nothing between them is unblocked
    (Tiny's stage-1 projection to 24); where the projection is also a result, it stays NCHW
    (slicing back would add a third of the work)."""
    rng = np.random.default_rng(1)
    mod = _expand_project_expand(16, 12, rng, returned)
    rewritten = rewrite(mod, SHIPPED, BLOCK)
    kernels = _kernels(rewritten)
    blocked = [k for k in kernels if f'"schedule_rule": "{SCHEDULE_RULE}"' in k.script()]
    assert sorted(_output_blocks(k) for k in blocked) == ([2] if returned else [2, 2])
    # Carried: the input blocked and the result unblocked, nothing in between; returned: the
    # expansion's result unblocked.
    assert len([k for k in kernels if "T_transpose" in k.script()]) == (1 if returned else 2)
    x = rng.standard_normal((1, 16, 10, 12)).astype("float32")
    vm = relax.VirtualMachine(tuning.build(rewritten, TARGET), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x))
    want = relax.VirtualMachine(tuning.build(mod, TARGET), tvm.cpu())["main"](tvm.runtime.tensor(x))
    pairs = zip(got, want, strict=True) if returned else [(got, want)]
    for g, w in pairs:
        assert g.shape == w.shape
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=0, atol=1e-5 * np.abs(w.numpy()).max())
