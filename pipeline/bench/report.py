"""Peer benchmark results (``make bench``): ``<date>-<model>.json`` (stable keys),
``.md`` (tables, the issue's targets and what stands in their way), ``.png`` (bar chart),
and ``latest-<model>.json`` (``<model>-t<N>`` at N threads); every file written atomically."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.common.files import atomic_path

NAMES = {"torch": "PyTorch eager", "onnxruntime": "ONNX Runtime", "paddle": "Paddle Inference",
         "tvm-untuned": "TVM untuned", "tvm-tuned": "TVM tuned",
         "tvm-tuned-nchw": "TVM tuned, NCHW graph (blocked layout off)",
         "tvm-tuned-fused": "TVM tuned, fused inverted residuals (FUSE=on)",
         "tvm-tuned-focused": "TVM tuned, focused search (SEARCH=focused)",
         "tvm-tuned-fused-focused": "TVM tuned, fused and focused (FUSE=on SEARCH=focused)"}
BACKENDS = {"onednn": "oneDNN", "native": "no oneDNN"}
# The targets (reported, never asserted).
TUNED_VS_ORT = 0.8
MIN_AGREEMENT = 99.9


def _rows(results: dict) -> dict[str, dict]:
    return {r["engine"]: r for r in results["rows"]}


def _ms(row: dict | None) -> float | None:
    return None if row is None else row.get("median_ms")


def evaluate_targets(results: dict) -> list[dict]:
    """Each target with ``met`` (True, False, or None when not measurable) and a sentence."""
    rows = _rows(results)
    tuned, ort = _ms(rows.get("tvm-tuned")), _ms(rows.get("onnxruntime"))

    def missing(*engines: str) -> str:
        for e in engines:
            if _ms(rows.get(e)) is None:
                row = rows.get(e, {})
                why = row.get("error") or row.get("note", "").removeprefix("not measured: ") or "not run"
                return f"{NAMES[e]}: {why}"
        return ""

    out = []
    if tuned is None or ort is None:
        out.append({"target": f"TVM tuned <= {TUNED_VS_ORT}x ONNX Runtime", "met": None,
                    "detail": missing("tvm-tuned", "onnxruntime")})
    else:
        ratio = tuned / ort
        need = TUNED_VS_ORT * ort
        out.append({"target": f"TVM tuned <= {TUNED_VS_ORT}x ONNX Runtime", "met": ratio <= TUNED_VS_ORT,
                    "detail": f"{ratio:.2f}x ({tuned:.2f} vs {ort:.2f} ms)" + (
                        "" if ratio <= TUNED_VS_ORT else
                        f"; needs <= {need:.2f} ms, {tuned - need:.2f} ms ({1 - need / tuned:.0%}) less")})
    for peer in ("torch", "paddle"):
        other = _ms(rows.get(peer))
        target = f"TVM tuned faster than {NAMES[peer]}"
        if tuned is None or other is None:
            out.append({"target": target, "met": None, "detail": missing("tvm-tuned", peer)})
        else:
            out.append({"target": target, "met": tuned < other,
                        "detail": f"{tuned:.2f} vs {other:.2f} ms ({other / tuned:.2f}x)"})
    low = [f"{NAMES[e]} {r['agreement']:.3f}%" for e, r in rows.items()
           if r.get("agreement") is not None and r["agreement"] < MIN_AGREEMENT]
    measured = [r for r in rows.values() if r.get("agreement") is not None]
    out.append({"target": f"agreement with PyTorch >= {MIN_AGREEMENT}%",
                "met": (not low) if measured else None,
                "detail": ("; ".join(low) if low else f"all >= {MIN_AGREEMENT}% "
                           f"(lowest {min(r['agreement'] for r in measured):.4f}%)") if measured
                else "not measurable"})
    return out


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _name(row: dict) -> str:
    extra = f" ({BACKENDS.get(row['backend'], row['backend'])})" if row.get("backend") else ""
    return NAMES.get(row["engine"], row["engine"]) + extra


def _settle(results: dict) -> str:
    """The pause before each batch (results written before it existed have none)."""
    settle = results.get("settle_s")
    return f", {settle:g} s pause before each engine's batch" if settle else ""


def _cpu_generation(machine: dict) -> str:
    """", LLVM cpu znver3, 8 float32 lanes" (absent from results written before they were recorded)."""
    if "llvm_cpu" not in machine:
        return ""
    return f", LLVM cpu {machine['llvm_cpu']}, {machine['vector_lanes']} float32 lanes"


def markdown(results: dict) -> str:
    m, inp = results["machine"], results["input"]
    h, w = results["input_size"]
    load = f"load average {m['load_avg_start'][0]:.2f} at the start, {m.get('load_avg_end', [float('nan')])[0]:.2f} "
    lines = [
        f"# PP-MobileSeg-{results['model'].capitalize()} {h}x{w}: TVM against its peers",
        "",
        f"- Machine: {m['cpu']} ({m['arch']}{_cpu_generation(m)}, {m['cores']} cores), {load}at the end (1 min).",
        f"- Date: {results['date']} {results['time']}. Command: `{results['command']}`",
        f"- Input: {inp['image']}, {inp['preprocessing']}; {inp['num_classes']} classes, label map out "
        "(VIM in every engine).",
        f"- {results['threads']} thread(s) per engine; {results['repeat']} timed runs per engine in "
        f"{results['rounds']} rounds, engines alternating{_settle(results)}; each engine in its own process "
        "(peak RSS is that process's VmHWM); agreement = pixels equal to PyTorch eager's label map.",
        "",
        "| engine | median ms | p90 ms | x ONNX Runtime | peak RSS MB | size MB | agreement % |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = []
    for r in results["rows"]:
        agreement = _fmt(r.get("agreement"), ".3f")
        lines.append(f"| {_name(r)} | {_fmt(r['median_ms'])} | {_fmt(r['p90_ms'])} | "
                     f"{_fmt(r.get('ratio_to_onnxruntime'))} | {_fmt(r['peak_rss_mb'], '.0f')} | "
                     f"{_fmt(r.get('size_mb'))} | {agreement} |")
        for key in ("error", "note"):
            if r.get(key):
                notes.append(f"- {_name(r)}: {'ERROR: ' if key == 'error' else ''}{r[key]}")
    sizes = [f"{_name(r)}: {r['size_counts']}" for r in results["rows"] if r.get("size_counts")]
    lines += ["", "Size counts what ships to a device: " + "; ".join(sizes) + ".", ""]
    if notes:
        lines += notes + [""]
    lines += ["## Targets (reported, not asserted)", ""]
    targets = evaluate_targets(results)
    for t in targets:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        lines.append(f"- {t['target']}: {verdict}, {t['detail']}")
    lines += [""] + _where_the_time_goes(results)
    return "\n".join(lines) + "\n"


# Kernel families for comparing per-kernel profiles: (family, TVM kernel name substrings,
# ONNX Runtime kernel kinds, see ort_engine._kernel_kind). First match wins; TVM's fused
# kernels are named after their main operator (fused_conv2d12_add13_... is a convolution with
# its epilogue; blocked depthwise ones are named depthwise_conv2d_nchwc).
FAMILIES = (
    ("VIM tail", ("vim", "argmax", "presence"), ("VIM tail",)),
    ("depthwise convolution", ("depthwise",), ("Conv depthwise", "FusedConv depthwise", "NchwcConv depthwise")),
    ("convolution", ("conv2d",), ("Conv", "FusedConv", "NchwcConv")),
    ("matmul", ("matmul", "dense"), ("MatMul", "FusedMatMul", "Gemm")),
    ("softmax", ("softmax",), ("Softmax",)),
    ("resize", ("resize2d",), ("Resize", "Upsample")),
    ("reduce mean", ("mean",), ("ReduceMean", "GlobalAveragePool")),
    ("layout transforms", ("layout_transform",), ("ReorderInput", "ReorderOutput")),
    ("VM builtins (allocation, shapes; an upper bound)", ("vm.builtin",), ()),
)
OTHER = "element-wise and other"


def kernel_family(engine: str, kernel: str) -> str:
    for family, tvm_keys, ort_ops in FAMILIES:
        if (any(k in kernel for k in tvm_keys) if engine.startswith("tvm") else kernel in ort_ops):
            return family
    return OTHER


def _by_family(engine: str, profile: list[dict]) -> dict[str, float]:
    out: dict[str, float] = {}
    for entry in profile:
        family = kernel_family(engine, entry["kernel"])
        out[family] = out.get(family, 0.0) + entry["ms"]
    return out


def _where_the_time_goes(results: dict) -> list[str]:
    profiles = results.get("profiles") or {}
    tvm, ort = profiles.get("tvm-tuned"), profiles.get("onnxruntime")
    heading = ["### Where the time goes (measured in this run)", ""]
    if not tvm or not ort:
        return [*heading, "No per-kernel profiles in this run (TVM tuned and ONNX Runtime) to compare."]
    fam_tvm, fam_ort = _by_family("tvm-tuned", tvm), _by_family("onnxruntime", ort)
    families = sorted(set(fam_tvm) | set(fam_ort), key=lambda f: -(fam_tvm.get(f, 0.0) - fam_ort.get(f, 0.0)))
    lines = [*heading,
             "Per-kernel profiles, mean of 5 instrumented runs after the timed ones (TVM: the VM's instrument "
             "callback around every kernel it calls; ONNX Runtime: its session profiler, per node), by kind of "
             "kernel, largest gap first:", "",
             "| kernels | TVM tuned ms | ONNX Runtime ms | difference ms |", "|---|---|---|---|"]
    for f in families:
        a, b = fam_tvm.get(f, 0.0), fam_ort.get(f, 0.0)
        lines.append(f"| {f} | {a:.2f} | {b:.2f} | {a - b:+.2f} |")
    total_tvm, total_ort = sum(fam_tvm.values()), sum(fam_ort.values())
    lines += [f"| all | {total_tvm:.2f} | {total_ort:.2f} | {total_tvm - total_ort:+.2f} |", ""]
    tuning = results.get("tuning") or {}
    trials = tuning.get("task_trials", {})
    if trials:
        split = {True: [0, 0.0], False: [0, 0.0]}
        for entry in tvm:
            task = trials.get(entry["kernel"])
            if task is not None:
                split[bool(task["tuned"])][0] += 1
                split[bool(task["tuned"])][1] += entry["ms"]
        lines += [f"Of the TVM tuned kernel time, {split[True][1]:.2f} ms is in the {split[True][0]} kernels "
                  f"`make tune` tuned and {split[False][1]:.2f} ms in the {split[False][0]} it left at TVM's "
                  "default schedules (a task counts as tuned when the database has records for it; the "
                  "rest is the hand-scheduled VIM tail and VM bookkeeping).", ""]
    if tuning:
        lines += [f"Heaviest TVM tuned kernels and what `make tune` spent on them ({tuning['report']}: "
                  f"{tuning['trials']} trials, {tuning['tasks_tuned']} of {tuning['tasks']} tasks tuned, "
                  f"{tuning['threads']} thread(s), {tuning['date']}):", ""]
    else:
        lines += ["Heaviest TVM tuned kernels (no tuning report to say what tuning spent on them):", ""]
    lines += ["| kernel | calls | ms per inference | share | tuned | trials |", "|---|---|---|---|---|---|"]
    for entry in [e for e in tvm if not e["kernel"].startswith("vm.")][:10]:
        task = trials.get(entry["kernel"], {})
        tuned = {True: "yes", False: "no"}.get(task.get("tuned"), "-")
        lines.append(f"| {entry['kernel']} | {entry['calls']:g} | {entry['ms']:.3f} | "
                     f"{entry['ms'] / total_tvm:.1%} | {tuned} | {task.get('trials', '-')} |")
    return lines


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = [r for r in results["rows"]][::-1]
    names = [_name(r) for r in rows]
    medians = [r["median_ms"] or 0.0 for r in rows]
    errors = [[0.0 for _ in rows], [(r["p90_ms"] - r["median_ms"]) if r["median_ms"] else 0.0 for r in rows]]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    colors = ["tab:orange" if r["engine"].startswith("tvm") else "tab:blue" for r in rows]
    ax.barh(names, medians, xerr=errors, color=colors, capsize=3)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    left = min((m for m in medians if m > 0), default=1.0) / 2
    ax.set_xlim(left=left, right=max((r["p90_ms"] or 0.0 for r in rows), default=1.0) * 3)
    for i, r in enumerate(rows):
        if r["median_ms"]:
            ratio = f", {r['ratio_to_onnxruntime']:.2f}x ORT" if r.get("ratio_to_onnxruntime") else ""
            ax.text(r["p90_ms"] * 1.08, i, f"{r['median_ms']:.1f} ms{ratio}", va="center", fontsize=8)
        else:
            ax.text(left * 1.05, i, "not measured" if not r.get("error") else "failed", va="center", fontsize=8)
    h, w = results["input_size"]
    ax.set_xlabel("median latency, ms (log scale; whisker: p90)")
    ax.set_title(f"PP-MobileSeg-{results['model'].capitalize()} {h}x{w}, {results['threads']} thread(s), "
                 f"{results['machine']['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(results: dict, out_dir: str | Path) -> list[Path]:
    """``<date>-<name>.json``/``.md``/``.png`` and ``latest-<name>.json`` in ``out_dir``; the
    name is the model's, with ``-t<N>`` when not one thread, so runs at different thread
    counts on one day keep their own files."""
    out_dir = Path(out_dir)
    name = results["model"] if results["threads"] == 1 else f"{results['model']}-t{results['threads']}"
    stem = out_dir / f"{results['date']}-{name}"
    results = {**results, "targets": evaluate_targets(results)}
    text = json.dumps(results, indent=1) + "\n"
    paths = [stem.with_suffix(".json"), stem.with_suffix(".md"), stem.with_suffix(".png"),
             out_dir / f"latest-{name}.json"]
    with atomic_path(paths[0]) as tmp:
        tmp.write_text(text)
    with atomic_path(paths[1]) as tmp:
        tmp.write_text(markdown(results))
    with atomic_path(paths[2]) as tmp:
        plot(results, tmp)
    with atomic_path(paths[3]) as tmp:
        tmp.write_text(text)
    return paths
