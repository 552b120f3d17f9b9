"""The fused VIM kernel (schedules/vim.py) against a NumPy reference, and the Relax
functions built around it against ``model.upsample`` (PyTorch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from model.upsample import interpolate_labels, vim_labels
from pipeline.bench.vim import logits_with_classes
from rpc.devices import load_profile
from schedules.vim import VimSchedule, argmax_primfunc, build_vim, labels_module

TARGET = load_profile("host").tvm_target()

C = 150
# Pixels whose two best candidates are closer than this may legitimately differ: the
# kernel's fused multiply-adds round differently from NumPy/PyTorch.
TIE = 1e-5


def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch bilinear, align_corners=False: src = max((dst + 0.5) * in/out - 0.5, 0)."""
    scale = np.float32(n_in) / np.float32(n_out)
    src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0))
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0.astype(np.float32)).astype(np.float32)


def reference_vim(logits: np.ndarray, present: np.ndarray, H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels [1, H, W] int32 and, per pixel, the margin between the two best candidates."""
    _, _, h, w = logits.shape
    y0, y1, ly = _taps(h, H)
    x0, x1, lx = _taps(w, W)
    g = logits[0, present]  # [K, h, w]
    rows = g[:, :, x0] * (1 - lx) + g[:, :, x1] * lx  # horizontal first, as PyTorch's CPU kernel
    v = rows[:, y0, :] * (1 - ly)[:, None] + rows[:, y1, :] * ly[:, None]
    win = v.argmax(0)  # first max on ties
    if v.shape[0] > 1:
        top2 = np.partition(v, v.shape[0] - 2, axis=0)[-2:]
        margin = top2[1] - top2[0]
    else:
        margin = np.full(win.shape, np.inf, np.float32)
    return present[win].astype(np.int32)[None], margin


def _assert_labels(ours: np.ndarray, ref: np.ndarray, margin: np.ndarray) -> None:
    assert ours.shape == ref.shape and ours.dtype == np.int32
    differ = ours[0] != ref[0]
    bad = differ & (margin >= TIE)
    assert not bad.any(), f"{int(bad.sum())} pixels differ away from ties (of {int(differ.sum())} differing)"


_BUILT: dict[tuple, tvm.runtime.Module] = {}


def _kernel(h: int, w: int, H: int, W: int, schedule: VimSchedule | None = None) -> tvm.runtime.Module:
    key = (h, w, H, W, schedule)
    if key not in _BUILT:
        _BUILT[key] = build_vim(C, h, w, H, W, TARGET, schedule)
    return _BUILT[key]


def _run(mod: tvm.runtime.Module, logits: np.ndarray, present: np.ndarray, H: int, W: int) -> np.ndarray:
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.full((1, H, W), -1, np.int32), dev)
    mod["vim"](tvm.runtime.tensor(logits, dev), tvm.runtime.tensor(present, dev), out)
    return out.numpy()


def _present(rng: np.random.Generator, K: int) -> np.ndarray:
    return np.sort(rng.choice(C, K, replace=False)).astype(np.int64)


# K 1, 2, 7, 30, 150 cover the channel chunk (8) and every tail chunk (4, 2, 1).
@pytest.mark.parametrize("K", [1, 2, 7, 30, C])
@pytest.mark.parametrize("sizes", [(45, 60, 360, 480), (64, 64, 512, 512)], ids=["45x60-360x480", "64x64-512x512"])
def test_kernel_matches_numpy(K: int, sizes: tuple[int, int, int, int]) -> None:
    h, w, H, W = sizes
    rng = np.random.default_rng(K * 1000 + h)
    logits = rng.standard_normal((1, C, h, w), dtype=np.float32)
    present = np.arange(C, dtype=np.int64) if K == C else _present(rng, K)
    ref, margin = reference_vim(logits, present, H, W)
    _assert_labels(_run(_kernel(h, w, H, W), logits, present, H, W), ref, margin)


def test_one_symbolic_k_for_every_call() -> None:
    """One build serves any K, in any order (nothing about K is fixed at compile time)."""
    h, w, H, W = 45, 60, 360, 480
    mod = _kernel(h, w, H, W)
    rng = np.random.default_rng(7)
    logits = rng.standard_normal((1, C, h, w), dtype=np.float32)
    for K in [150, 3, 64, 1, 9]:
        present = _present(rng, K)
        ref, margin = reference_vim(logits, present, H, W)
        _assert_labels(_run(mod, logits, present, H, W), ref, margin)


@pytest.mark.parametrize("K", [2, 7, 30, C])
def test_exact_ties_first_present_wins(K: int) -> None:
    """Duplicate channels give bit-identical candidates: the earlier one in ``present``
    must win (torch.argmax semantics), so a copy's class id may never appear."""
    h, w, H, W = 45, 60, 360, 480
    rng = np.random.default_rng(K)
    logits = rng.standard_normal((1, C, h, w), dtype=np.float32)
    present = np.arange(C, dtype=np.int64) if K == C else _present(rng, K)
    copies = [i for i in range(1, K) if i == 1 or rng.random() < 0.5]
    for i in copies:  # channel present[i] := channel present[j] for some earlier j
        logits[0, present[i]] = logits[0, present[rng.integers(0, i)]]
    ref, _ = reference_vim(logits, present, H, W)
    ours = _run(_kernel(h, w, H, W), logits, present, H, W)
    assert not np.isin(ours, present[copies]).any(), "a duplicate beat the channel it copies"
    # Elsewhere as usual, with margins over the distinct channels only.
    originals = np.setdiff1d(present, present[copies])
    _, margin = reference_vim(logits, originals, H, W)
    _assert_labels(ours, ref, margin)


def test_all_equal_logits_pick_first() -> None:
    h, w, H, W = 45, 60, 360, 480
    present = np.array([3, 17, 99], np.int64)
    logits = np.zeros((1, C, h, w), np.float32)
    assert (_run(_kernel(h, w, H, W), logits, present, H, W) == 3).all()


@pytest.mark.parametrize(
    "sizes, schedule",
    [
        ((45, 60, 67, 90), None),  # row tiles do not divide H: last one shifted, guarded
        ((20, 30, 97, 75), None),  # odd W: scalar fallback; ragged non-integer scales
        ((45, 60, 9, 12), None),  # downsampling: gather fallback
        ((64, 64, 512, 512), VimSchedule(tile_rows=16, tile_cols=128, chunk=4)),
        ((45, 60, 360, 480), VimSchedule(chunk=1)),
    ],
    ids=["ragged-rows", "odd-width", "downsample", "small-tiles", "chunk-1"],
)
def test_kernel_other_shapes_and_schedules(sizes: tuple[int, int, int, int], schedule: VimSchedule | None) -> None:
    h, w, H, W = sizes
    rng = np.random.default_rng(H * W)
    logits = rng.standard_normal((1, C, h, w), dtype=np.float32)
    mod = _kernel(h, w, H, W, schedule)
    for K in [1, 7, 30]:
        present = _present(rng, K)
        ref, margin = reference_vim(logits, present, H, W)
        _assert_labels(_run(mod, logits, present, H, W), ref, margin)


def _torch_margin(logits: np.ndarray, present: torch.Tensor, H: int, W: int) -> np.ndarray:
    up = torch.nn.functional.interpolate(
        torch.from_numpy(logits)[:, present], size=(H, W), mode="bilinear", align_corners=False
    )[0]
    if up.shape[0] == 1:
        return np.full((H, W), np.inf, np.float32)
    top2 = up.topk(2, dim=0).values
    return (top2[0] - top2[1]).numpy()


@pytest.fixture(scope="module")
def vim_vm() -> relax.VirtualMachine:
    ex = tvm.compile(labels_module(C, 45, 60, 360, 480, "vim"), target=TARGET)
    return relax.VirtualMachine(ex, tvm.cpu())


@pytest.mark.parametrize("K", [1, 2, 7, 30, C])
def test_relax_vim_matches_torch(vim_vm: relax.VirtualMachine, K: int) -> None:
    """main(logits) = argmax -> unique -> match_cast -> fused kernel, against vim_labels."""
    h, w, H, W = 45, 60, 360, 480
    logits = logits_with_classes(C, h, w, K, seed=K)
    ours = vim_vm["main"](tvm.runtime.tensor(logits, tvm.cpu())).numpy()
    t = torch.from_numpy(logits)
    ref = vim_labels(t, (H, W)).numpy()
    present = torch.unique(t.argmax(1))
    assert len(present) == K
    _assert_labels(ours, ref, _torch_margin(logits, present, H, W))


def test_relax_vim_on_plain_random_logits(vim_vm: relax.VirtualMachine) -> None:
    """Unshaped random logits: K comes out of the data (most classes present)."""
    logits = np.random.default_rng(1).standard_normal((1, C, 45, 60), dtype=np.float32)
    ours = vim_vm["main"](tvm.runtime.tensor(logits, tvm.cpu())).numpy()
    t = torch.from_numpy(logits)
    present = torch.unique(t.argmax(1))
    _assert_labels(ours, vim_labels(t, (360, 480)).numpy(), _torch_margin(logits, present, 360, 480))


@pytest.mark.parametrize("mode", ["vim-unfused", "interpolate", "interpolate-stock"])
def test_relax_reference_compositions_match_torch(mode: str) -> None:
    h, w, H, W = 45, 60, 360, 480
    ex = tvm.compile(labels_module(C, h, w, H, W, mode), target=TARGET)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    logits = logits_with_classes(C, h, w, 7, seed=3)
    ours = vm["main"](tvm.runtime.tensor(logits, tvm.cpu())).numpy()
    t = torch.from_numpy(logits)
    if mode.startswith("interpolate"):
        ref = interpolate_labels(t, (H, W)).numpy()
        margin = _torch_margin(logits, torch.arange(C), H, W)
    else:
        ref = vim_labels(t, (H, W)).numpy()
        margin = _torch_margin(logits, torch.unique(t.argmax(1)), H, W)
    _assert_labels(ours, ref, margin)


@pytest.mark.parametrize("hw", [(45, 60), (20, 30), (7, 13)])
def test_argmax_kernel_first_max(hw: tuple[int, int]) -> None:
    """The low-resolution argmax kernel: int64, first max on exact ties (duplicate channels)."""
    h, w = hw
    rng = np.random.default_rng(h * w)
    logits = rng.standard_normal((1, C, h, w), dtype=np.float32)
    logits[0, 100:] = logits[0, 50:100]  # classes 100.. tie exactly with 50..
    logits[0, 10, 0, 0] = logits[0, 3, 0, 0] = 50.0
    mod = tvm.compile(tvm.IRModule({"argmax": argmax_primfunc(C, h, w)}), target=TARGET).jit()
    out = tvm.runtime.tensor(np.zeros((1, h, w), np.int64), tvm.cpu())
    mod["argmax"](tvm.runtime.tensor(logits, tvm.cpu()), out)
    np.testing.assert_array_equal(out.numpy(), logits.argmax(1))
    assert out.numpy()[0, 0, 0] == 3


def test_relax_vim_with_stock_argmax() -> None:
    h, w, H, W = 45, 60, 360, 480
    ex = tvm.compile(labels_module(C, h, w, H, W, "vim-stock-argmax"), target=TARGET)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    logits = logits_with_classes(C, h, w, 30, seed=5)
    ours = vm["main"](tvm.runtime.tensor(logits, tvm.cpu())).numpy()
    t = torch.from_numpy(logits)
    ref = vim_labels(t, (H, W)).numpy()
    _assert_labels(ours, ref, _torch_margin(logits, torch.unique(t.argmax(1)), H, W))
