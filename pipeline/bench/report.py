"""Peer benchmark results (``make bench``): ``<date>-<model>.json`` (stable keys),
``.md`` (tables, the issue's targets and what stands in their way), ``.png`` (bar chart),
and ``latest-<model>.json`` (``<model>-t<N>`` at N threads); every file written atomically."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from pipeline.bench.engines import column
from pipeline.common.files import atomic_path

NAMES = {"torch": "PyTorch eager", "onnxruntime": "ONNX Runtime", "paddle": "Paddle Inference",
         "openvino": "OpenVINO (CPU)", "mnn": "MNN (CPU)", "litert": "LiteRT (XNNPACK)",
         "executorch": "ExecuTorch (XNNPACK)", "ncnn": "ncnn",
         "tvm-untuned": "TVM untuned", "tvm-tuned": "TVM tuned",
         "tvm-tuned-nchw": "TVM tuned, NCHW graph (blocked layout off)",
         "tvm-tuned-fused": "TVM tuned, fused inverted residuals (FUSE=on)",
         "tvm-tuned-focused": "TVM tuned, focused search (SEARCH=focused)",
         "tvm-tuned-fused-focused": "TVM tuned, fused and focused (FUSE=on SEARCH=focused)"}
BACKENDS = {"onednn": "oneDNN", "native": "no oneDNN"}
# The issue's targets (reported, never asserted).
TUNED_VS_ORT = 0.8
TUNED_VS_FASTEST = 0.8
MIN_AGREEMENT = 99.9
MAX_LOGITS_DIFF = 1e-4  # largest absolute difference from PyTorch eager's logits
COLUMNS = {"logits": "network to logits", "labels": "label map (VIM)"}


def _rows(results: dict) -> dict[str, dict]:
    return {r["engine"]: r for r in results["rows"]}


def _ms(row: dict | None, output: str = "labels") -> float | None:
    return None if row is None else row.get(column(output, "median_ms"))


def fastest_peer(results: dict, output: str) -> str | None:
    """The fastest engine of ``output``'s column other than TVM's builds."""
    timed = [r for r in results["rows"] if not r["engine"].startswith("tvm") and _ms(r, output)]
    return min(timed, key=lambda r: _ms(r, output))["engine"] if timed else None


def _fastest_target(results: dict, output: str, missing: Callable[..., str]) -> dict:
    rows = _rows(results)
    target = f"TVM tuned <= {TUNED_VS_FASTEST}x the fastest other engine, {COLUMNS[output]}"
    tuned, peer = _ms(rows.get("tvm-tuned"), output), fastest_peer(results, output)
    if tuned is None or peer is None:
        return {"target": target, "met": None, "detail": missing("tvm-tuned") or "no other engine measured"}
    other = _ms(rows[peer], output)
    ratio = tuned / other
    detail = f"{ratio:.2f}x {NAMES.get(peer, peer)} ({tuned:.2f} vs {other:.2f} ms)"
    if ratio > TUNED_VS_FASTEST:
        detail += f"; needs <= {TUNED_VS_FASTEST * other:.2f} ms; " + _where(results, output, peer)
    return {"target": target, "met": ratio <= TUNED_VS_FASTEST, "detail": detail, "fastest": peer,
            "ratio": ratio}


def profiled_peer(results: dict, output: str) -> str | None:
    """The fastest engine of ``output``'s column, other than TVM's builds, that has a profile."""
    timed = sorted((r for r in results["rows"] if not r["engine"].startswith("tvm") and _ms(r, output)),
                   key=lambda r: _ms(r, output))
    return next((r["engine"] for r in timed if _profile(results, output, r["engine"])[0]), None)


def _where(results: dict, output: str, peer: str) -> str:
    """Which kinds of kernel hold TVM tuned's excess over ``peer``, from the two profiles; when
    ``peer`` has no profiler, over the fastest engine that has one."""
    against = peer if _profile(results, output, peer)[0] else profiled_peer(results, output)
    gaps = _family_gaps(results, output, against) if against else []
    if not gaps:
        return "no profiles of both to say where"
    note = "" if against == peer else (f"{NAMES.get(peer, peer)} has no profiler; against the fastest engine that has "
                                        f"one, {NAMES.get(against, against)}, ")
    behind = [f"{f} {d:+.2f} ms" for f, d in gaps[:3] if d > 0]
    return note + (("the difference is in " + ", ".join(behind)) if behind
                   else "no kind of kernel is slower in the profiles")


def _profile(results: dict, output: str, engine: str) -> tuple[list[dict] | None, str]:
    """``engine``'s profile in ``output``'s column, or, for a label-map runner without a
    profiler (MNN's), its logits runner's, with a note saying so."""
    profile = (results.get("profiles" if output == "labels" else "logits_profiles") or {}).get(engine)
    if profile or output == "logits":
        return profile, ""
    fallback = (results.get("logits_profiles") or {}).get(engine)
    return fallback, " (its label-map runner has no profiler: the network's kernels only)" if fallback else ""


def _family_gaps(results: dict, output: str, peer: str) -> list[tuple[str, float]]:
    """Per kind of kernel, TVM tuned's ms minus ``peer``'s in ``output``'s profiles, largest first."""
    tvm, other = _profile(results, output, "tvm-tuned")[0], _profile(results, output, peer)[0]
    if not tvm or not other:
        return []
    a, b = _by_family("tvm-tuned", tvm), _by_family(peer, other)
    return sorted(((f, a.get(f, 0.0) - b.get(f, 0.0)) for f in set(a) | set(b)), key=lambda g: -g[1])


def evaluate_targets(results: dict) -> list[dict]:
    """Each target with ``met`` (True, False, or None when not measurable) and a sentence."""
    rows = _rows(results)
    tuned, ort = _ms(rows.get("tvm-tuned")), _ms(rows.get("onnxruntime"))

    def missing(*engines: str) -> str:
        for e in engines:
            if _ms(rows.get(e)) is None and _ms(rows.get(e), "logits") is None:
                row = rows.get(e, {})
                why = row.get("error") or row.get("note", "").removeprefix("not measured: ") or "not run"
                return f"{NAMES.get(e, e)}: {why}"
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
    out += [_fastest_target(results, o, missing) for o in ("logits", "labels")]
    low = [f"{NAMES.get(e, e)} {r['agreement']:.3f}%" for e, r in rows.items()
           if r.get("agreement") is not None and r["agreement"] < MIN_AGREEMENT]
    measured = [r for r in rows.values() if r.get("agreement") is not None]
    out.append({"target": f"agreement with PyTorch >= {MIN_AGREEMENT}%",
                "met": (not low) if measured else None,
                "detail": ("; ".join(low) if low else f"all >= {MIN_AGREEMENT}% "
                           f"(lowest {min(r['agreement'] for r in measured):.4f}%)") if measured
                else "not measurable"})
    diffs = {e: r["logits_max_abs_diff"] for e, r in rows.items() if r.get("logits_max_abs_diff") is not None}
    far = [f"{NAMES.get(e, e)} {d:.2e}" for e, d in diffs.items() if d > MAX_LOGITS_DIFF]
    out.append({"target": f"logits within {MAX_LOGITS_DIFF:g} of PyTorch's (max abs difference)",
                "met": (not far) if diffs else None,
                "detail": ("; ".join(far) if far else f"all <= {MAX_LOGITS_DIFF:g} (largest {max(diffs.values()):.2e})")
                if diffs else "not measurable"})
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
        f"- Input: {inp['image']}, {inp['preprocessing']}; {inp['num_classes']} classes. Two columns: the "
        "network to its logits (every engine; TVM: the library's `logits` function, the same network kernels as "
        "`main`), and the label map through VIM (the engines that can express VIM's data-dependent class "
        "selection; the others are timed on the logits column only).",
        f"- {results['threads']} thread(s) per engine; {results['repeat']} timed runs per engine and column in "
        f"{results['rounds']} rounds, engines alternating{_settle(results)}; each engine and column in its own "
        "process (peak RSS is that process's VmHWM); agreement = pixels equal to PyTorch eager's label map; "
        "logits diff = largest absolute difference from PyTorch eager's logits.",
        "",
        "| engine | logits median ms | logits p90 ms | labels median ms | labels p90 ms | labels x ONNX Runtime "
        "| peak RSS MB | size MB | agreement % | logits diff |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for r in results["rows"]:
        rss = max((v for v in (r.get("peak_rss_mb"), r.get("logits_peak_rss_mb")) if v is not None), default=None)
        lines.append(f"| {_name(r)} | {_fmt(r.get('logits_median_ms'))} | {_fmt(r.get('logits_p90_ms'))} | "
                     f"{_fmt(r['median_ms'])} | {_fmt(r['p90_ms'])} | {_fmt(r.get('ratio_to_onnxruntime'))} | "
                     f"{_fmt(rss, '.0f')} | {_fmt(r.get('size_mb'))} | {_fmt(r.get('agreement'), '.3f')} | "
                     f"{_fmt(r.get('logits_max_abs_diff'), '.1e')} |")
        for key in ("error", "note", "labels_shape_note", "logits_shape_note"):
            if r.get(key):
                notes.append(f"- {_name(r)}: {'ERROR: ' if key == 'error' else ''}{r[key]}")
        if r.get("outputs") == ["logits"]:
            notes.append(f"- {_name(r)}: timed on the logits column only (it cannot express the VIM tail).")
    sizes = [f"{_name(r)}: {r['size_counts']}" for r in results["rows"] if r.get("size_counts")]
    lines += ["", "Size counts what ships to a device: " + "; ".join(sizes) + ".", ""]
    if notes:
        lines += notes + [""]
    lines += _settings_table(results["rows"])
    lines += ["## Targets (reported, not asserted)", ""]
    targets = evaluate_targets(results)
    for t in targets:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        lines.append(f"- {t['target']}: {verdict}, {t['detail']}")
    lines += [""] + _where_the_time_goes(results)
    return "\n".join(lines) + "\n"


def _settings_table(rows: list[dict]) -> list[str]:
    """Each engine's precision, threads and what runs outside its fast path, as its worker reported."""
    rows = [r for r in rows if r.get("settings")]
    if not rows:
        return []
    lines = ["### Engine settings (as each engine reported them)", "",
             "| engine | precision | threads | fast path, and what runs outside it | other |", "|---|---|---|---|---|"]
    for r in rows:
        st = dict(r["settings"])
        precision, threads, fast = (st.pop(k, "-") for k in ("precision", "threads", "fast path"))
        other = "; ".join(f"{k}: {v}" for k, v in st.items()) or "-"
        lines.append(f"| {_name(r)} | {precision} | {threads} | {fast} | {other} |")
    return [*lines, ""]


# Kernel families for comparing per-kernel profiles: (family, TVM kernel name substrings, the
# other engines' kinds: ONNX Runtime's (ort_engine._kernel_kind), OpenVINO's node types
# (openvino_engine._kernel_kind), MNN's operator types). First match wins; TVM's fused
# kernels are named after their main operator (fused_conv2d12_add13_... is a convolution with
# its epilogue; blocked depthwise ones are named depthwise_conv2d_nchwc).
FAMILIES = (
    ("VIM tail", ("vim", "argmax", "presence"), ("VIM tail",)),
    ("depthwise convolution", ("depthwise",), ("Conv depthwise", "FusedConv depthwise", "NchwcConv depthwise",
                                                "GroupConvolution depthwise", "Convolution depthwise",
                                                "ConvolutionDepthwise")),
    ("convolution", ("conv2d",), ("Conv", "FusedConv", "NchwcConv", "Convolution", "GroupConvolution")),
    ("matmul", ("matmul", "dense"), ("MatMul", "FusedMatMul", "Gemm", "FullyConnected")),
    ("softmax", ("softmax",), ("Softmax",)),
    ("resize", ("resize2d",), ("Resize", "Upsample", "Interpolate", "Interp")),
    ("reduce mean", ("mean",), ("ReduceMean", "GlobalAveragePool", "Reduction")),
    ("layout transforms", ("layout_transform",), ("ReorderInput", "ReorderOutput", "Reorder", "Transpose",
                                                  "Raster", "ConvertTensor")),
    ("VM builtins (allocation, shapes; an upper bound)", ("vm.builtin",), ()),
)
OTHER = "element-wise and other"
PROFILERS = {"tvm-tuned": "the VM's instrument callback around every kernel it calls",
             "onnxruntime": "its session profiler, per node", "openvino": "its per-node performance counters",
             "mnn": "the time between its per-operator session callbacks"}


def kernel_family(engine: str, kernel: str) -> str:
    for family, tvm_keys, peer_kinds in FAMILIES:
        if (any(k in kernel for k in tvm_keys) if engine.startswith("tvm") else kernel in peer_kinds):
            return family
    return OTHER


def _by_family(engine: str, profile: list[dict]) -> dict[str, float]:
    out: dict[str, float] = {}
    for entry in profile:
        family = kernel_family(engine, entry["kernel"])
        out[family] = out.get(family, 0.0) + entry["ms"]
    return out


def _comparison(results: dict, output: str, peer: str) -> list[str]:
    """TVM tuned against ``peer`` per kind of kernel in ``output``'s column, largest gap first."""
    title = f"{COLUMNS[output]}, TVM tuned against {NAMES.get(peer, peer)}"
    (tvm, _), (other, note) = _profile(results, output, "tvm-tuned"), _profile(results, output, peer)
    if not tvm or not other:
        return [f"No per-kernel profiles of TVM tuned and {NAMES.get(peer, peer)} in this run ({COLUMNS[output]}).",
                ""]
    fam_tvm, fam_peer = _by_family("tvm-tuned", tvm), _by_family(peer, other)
    lines = [f"**{title}** (TVM: {PROFILERS['tvm-tuned']}; {NAMES.get(peer, peer)}: "
             f"{PROFILERS.get(peer, 'its profiler')}{note}):", "",
             f"| kernels | TVM tuned ms | {NAMES.get(peer, peer)} ms | difference ms |", "|---|---|---|---|"]
    for f, gap in _family_gaps(results, output, peer):
        lines.append(f"| {f} | {fam_tvm.get(f, 0.0):.2f} | {fam_peer.get(f, 0.0):.2f} | {gap:+.2f} |")
    total_tvm, total_peer = sum(fam_tvm.values()), sum(fam_peer.values())
    return [*lines, f"| all | {total_tvm:.2f} | {total_peer:.2f} | {total_tvm - total_peer:+.2f} |", ""]


def _where_the_time_goes(results: dict) -> list[str]:
    lines = ["### Where the time goes (measured in this run)", "",
             "Per-kernel profiles, mean of 5 instrumented runs after the timed ones, by kind of kernel: TVM tuned "
             "against ONNX Runtime and against the fastest other engine of each column that has a profiler.", ""]
    pairs = [("labels", "onnxruntime")]
    for output in ("logits", "labels"):
        # The fastest engine, or the fastest one with a profiler when it has none (LiteRT).
        peer = profiled_peer(results, output) or fastest_peer(results, output)
        if peer and (output, peer) not in pairs:
            pairs.append((output, peer))
    for output, peer in pairs:
        lines += _comparison(results, output, peer)
    tvm = (results.get("profiles") or {}).get("tvm-tuned")
    if not tvm:
        return lines
    total_tvm = sum(e["ms"] for e in tvm)
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
    """Median per engine, a bar per column (logits, label map), p90 as the whisker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = results["rows"][::-1]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.5 * len(rows)))
    measured = [v for r in rows for o in COLUMNS if (v := _ms(r, o))]
    left = min(measured, default=1.0) / 2
    right = max((r.get(column(o, "p90_ms")) or 0.0 for r in rows for o in COLUMNS), default=1.0) * 3
    for shift, (output, label) in zip((0.2, -0.2), COLUMNS.items(), strict=True):
        medians = [_ms(r, output) or 0.0 for r in rows]
        p90 = [(r.get(column(output, "p90_ms")) or m) - m for r, m in zip(rows, medians, strict=True)]
        ys = [i + shift for i in range(len(rows))]
        ax.barh(ys, medians, height=0.38, xerr=[[0.0] * len(rows), p90], capsize=2, label=label,
                color="tab:orange" if output == "labels" else "tab:blue")
        for y, r, m, extra in zip(ys, rows, medians, p90, strict=True):
            text = f"{m:.1f} ms" if m else ("failed" if r.get("error") else "not measured")
            ax.text((m + extra) * 1.08 if m else left * 1.05, y, text, va="center", fontsize=7)
    ax.set_yticks(range(len(rows)), [_name(r) for r in rows], fontsize=8)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlim(left=left, right=right)
    ax.legend(fontsize=7, loc="lower right")
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
