"""``make bench-vim`` (``ppmseg bench-vim``): the fused VIM kernel against the unfused Relax composition and
plain upsample + argmax of all channels (stock ops, and the fused kernel over every class), for several
numbers of present classes K.

Writes ``bench/results/vim.json`` (medians in ms; ``fused_ms``, ``unfused_ms`` and
``plain_ms``, ``plain_fused_ms`` are whole ``main(logits) -> labels`` runs, argmax and unique included),
``vim.md`` and ``vim.png`` (latency against K).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tvm
from tvm import relax, tirx

from pipeline.common.files import atomic_path, write_json, write_text
from rpc.devices import load_profile
from schedules.vim import build_vim, emit_vim_unfused, labels_module


def logits_with_classes(C: int, h: int, w: int, K: int, seed: int = 0) -> np.ndarray:
    """Random logits [1, C, h, w] whose low-resolution argmax has exactly K distinct classes."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((1, C, h, w), dtype=np.float32)
    classes = rng.choice(C, K, replace=False)
    winner = classes[rng.integers(0, K, (h, w))]
    winner.flat[rng.permutation(h * w)[:K]] = classes  # every class wins somewhere
    logits[0, winner, np.arange(h)[:, None], np.arange(w)[None, :]] += 20.0  # beats any N(0,1) tail
    return logits


def _present_only_module(C: int, h: int, w: int, H: int, W: int) -> tvm.IRModule:
    """``main(logits, present[K]) -> labels`` from stock ops: the unfused kernel part alone."""
    bb = relax.BlockBuilder()
    logits = relax.Var("logits", relax.TensorType((1, C, h, w), "float32"))
    present = relax.Var("present", relax.TensorType((tirx.Var("K", "int64"),), "int64"))
    with bb.function("main", [logits, present]):
        with bb.dataflow():
            labels = bb.emit_output(emit_vim_unfused(bb, logits, (H, W), present))
        bb.emit_func_output(labels)
    return bb.get()


def _median_ms(evaluator, *args) -> float:
    return float(evaluator(*args).median) * 1e3


def benchmark(
    target: tvm.target.Target,
    C: int = 150,
    hw: tuple[int, int] = (64, 64),
    out_hw: tuple[int, int] = (512, 512),
    ks: Sequence[int] = (1, 5, 10, 20, 50, 150),
    min_repeat_ms: int = 100,
) -> list[dict[str, float]]:
    """Fused kernel vs the stock-op VIM vs plain interpolation, in ms (median of 5).

    ``*_kernel``: given ``present``; ``*_e2e``: whole ``main(logits)`` including
    argmax + unique. ``plain`` does not depend on K and is measured once.
    """
    (h, w), (H, W) = hw, out_hw
    dev = tvm.cpu()
    t0 = time.perf_counter()
    fused = build_vim(C, h, w, H, W, target)
    vms = {
        mode: relax.VirtualMachine(tvm.compile(labels_module(C, h, w, H, W, mode), target=target), dev)
        for mode in ("vim", "vim-stock-argmax", "vim-unfused", "interpolate", "interpolate-stock")
    }
    unfused_kernel = relax.VirtualMachine(tvm.compile(_present_only_module(C, h, w, H, W), target=target), dev)
    print(f"built in {time.perf_counter() - t0:.1f} s for {target}", flush=True)

    def ev(vm_or_mod, name: str = "main"):
        return vm_or_mod.time_evaluator(name, dev, number=1, repeat=5, min_repeat_ms=min_repeat_ms)

    rows = []
    plain_ms = plain_fused_ms = None
    out = tvm.runtime.tensor(np.zeros((1, H, W), np.int32), dev)
    for K in ks:
        logits_np = logits_with_classes(C, h, w, K, seed=K)
        logits = tvm.runtime.tensor(logits_np, dev)
        present = tvm.runtime.tensor(np.unique(logits_np.argmax(1)).astype(np.int64), dev)
        assert present.shape[0] == K
        fused["vim"](logits, present, out)
        labels = {m: vm["main"](logits).numpy() for m, vm in vms.items()}
        for m, lab in labels.items():  # sanity: all variants agree (no near-ties in this data)
            if not m.startswith("interpolate") and not np.array_equal(lab, out.numpy()):
                print(f"warning: {m} differs from the fused kernel on {(lab != out.numpy()).sum()} pixels")
        if plain_ms is None:  # independent of K: measured once
            plain_ms = _median_ms(ev(vms["interpolate-stock"]), logits)
            plain_fused_ms = _median_ms(ev(vms["interpolate"]), logits)
        row = {
            "K": K,
            "fused_kernel": _median_ms(ev(fused, "vim"), logits, present, out),
            "unfused_kernel": _median_ms(ev(unfused_kernel), logits, present),
            "fused_e2e": _median_ms(ev(vms["vim"]), logits),
            "fused_e2e_stock_argmax": _median_ms(ev(vms["vim-stock-argmax"]), logits),
            "unfused_e2e": _median_ms(ev(vms["vim-unfused"]), logits),
            "plain": plain_ms,
            "plain_fused": plain_fused_ms,
        }
        rows.append(row)
        print(
            f"K={K:4d}  fused {row['fused_kernel']:8.3f}  unfused {row['unfused_kernel']:8.3f}  "
            f"fused e2e {row['fused_e2e']:8.3f} (stock argmax {row['fused_e2e_stock_argmax']:.3f})  "
            f"unfused e2e {row['unfused_e2e']:8.3f}  plain {plain_ms:8.2f}  plain fused {plain_fused_ms:8.2f}",
            flush=True,
        )
    return rows


def write_report(rows: list[dict[str, float]], threads: int, target: tvm.target.Target, out_dir: Path,
                 shape: dict) -> dict:
    """``vim.json``, ``vim.md`` and ``vim.png`` in ``out_dir``."""
    report = {
        "threads": threads,
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, mcpu {target.attrs['mcpu']}",
        "command": f"make bench-vim THREADS={threads}",
        **shape,
        "rows": [{"k": r["K"], "fused_ms": r["fused_e2e"], "unfused_ms": r["unfused_e2e"], "plain_ms": r["plain"],
                  "plain_fused_ms": r["plain_fused"],
                  "fused_kernel_ms": r["fused_kernel"], "unfused_kernel_ms": r["unfused_kernel"],
                  "fused_stock_argmax_ms": r["fused_e2e_stock_argmax"]} for r in rows],
    }
    write_json(out_dir / "vim.json", report, indent=2)
    write_text(out_dir / "vim.md", markdown(report))
    _plot(report, out_dir / "vim.png")
    return report


def markdown(report: dict) -> str:
    head = (f"VIM, {report['classes']} classes, {report['in_hw'][0]}x{report['in_hw'][1]} logits to "
            f"{report['out_hw'][0]}x{report['out_hw'][1]}, {report['threads']} thread(s), {report['machine']}, "
            f"{report['date']}; medians in ms of whole `main(logits) -> labels` runs (`{report['command']}`)\n\n")
    lines = ["| K | fused | unfused | plain | plain fused | unfused / fused | plain / fused | plain fused / fused "
             "| fused kernel alone |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['k']} | {r['fused_ms']:.3f} | {r['unfused_ms']:.3f} | {r['plain_ms']:.1f} | "
                     f"{r['plain_fused_ms']:.3f} | {r['unfused_ms'] / r['fused_ms']:.1f}x | "
                     f"{r['plain_ms'] / r['fused_ms']:.0f}x | {r['plain_fused_ms'] / r['fused_ms']:.1f}x | "
                     f"{r['fused_kernel_ms']:.3f} |")
    return head + "\n".join(lines) + "\n"


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [r["k"] for r in report["rows"]]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for key, label in (("fused_ms", "fused VIM kernel"), ("unfused_ms", "unfused Relax VIM"),
                       ("plain_ms", "upsample all + argmax (stock ops)"),
                       ("plain_fused_ms", "upsample all + argmax (fused kernel)")):
        ax.plot(ks, [r[key] for r in report["rows"]], marker="o", label=label)
    ax.set(xscale="log", yscale="log", xlabel="classes present (K)", ylabel="latency (ms, median)",
           title=f"VIM tail, {report['threads']} thread(s), {report['machine']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def run_vim_bench(threads: int, classes: int, in_hw: tuple[int, int], out_hw: tuple[int, int],
                  ks: Sequence[int], out_dir: Path) -> dict:
    """Benchmark at ``threads`` threads and write the report files; returns the report."""
    os.environ["TVM_NUM_THREADS"] = str(threads)  # read when the thread pool starts
    target = load_profile("host").tvm_target(threads=threads)
    rows = benchmark(target, classes, in_hw, out_hw, ks)
    shape = {"classes": classes, "in_hw": list(in_hw), "out_hw": list(out_hw)}
    return write_report(rows, threads, target, out_dir, shape)
