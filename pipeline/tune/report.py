"""Tuning reports: ``report.json`` (stable keys for tools), ``report.md`` and
``report.png`` in the artifact directory, and side-by-side comparison of two."""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline.common.files import atomic_path, write_json, write_text


def tuning_report(run, req, tasks, timings: dict, checks: dict, untuned: dict[str, float],  # noqa: ANN001
                  tuned_tasks: dict[str, float], parts: list[dict], k_present: int, before: int) -> dict:
    """The report of a finished run (``pipeline.tune.steps.Run``, its ``TuneRequest`` and
    ``Tasks``) from what the steps measured."""
    from model.summary import summarize
    from rpc.devices import load_profile

    device, work = run.device, run.work
    trials = work.measured_trials()
    per_task = work.trials_per_task(tasks.all)
    gflop = summarize(run.model, req.input_size).gflops
    peak = None if device.emulated else load_profile(device.name).peak_gflops(device.threads)
    tuned_ms, untuned_ms = timings["tuned"]["median_ms"], timings["untuned"]["median_ms"]
    return {
        "model": req.model, "device": device.name, "emulated": device.emulated, "threads": device.threads,
        "input_size": list(req.input_size), "upsample": run.spec.upsample, "trials": trials,
        "new_trials": trials - before, "target": device.config.target, "work_dir": str(work.path),
        "artifact": str(run.out_dir), "date": time.strftime("%Y-%m-%d %H:%M"),
        "elapsed_s": round(time.perf_counter() - run.t_start, 1), "command": req.command,
        "untuned": timings["untuned"], "tuned": timings["tuned"], "speedup": untuned_ms / tuned_ms,
        "checks": checks,
        "tasks": [{"task": t.task_name, "calls": int(t.weight), "flops": float(_flops(t)),
                   "untuned_ms": untuned[t.task_name], "tuned_ms": tuned_tasks[t.task_name],
                   "trials": per_task[t.task_name], "tuned": per_task[t.task_name] > 0,
                   "ablation_only": i >= len(tasks.network)} for i, t in enumerate(tasks.all)],
        "profile": parts,
        "gflops": {"network_gflop": gflop, "tuned_gflops": gflop / tuned_ms * 1e3,
                   "untuned_gflops": gflop / untuned_ms * 1e3, "peak_gflops": peak},
        "ablation": {"k": k_present, "classes": run.model.cfg.num_classes, "vim_ms": tuned_ms,
                     "interpolate_ms": timings.get("tuned-interpolate", {}).get("median_ms")},
    }


def _flops(task) -> float:  # noqa: ANN001 - a MetaSchedule ExtractedTask
    from tvm.s_tir.analysis import estimate_tir_flops

    return estimate_tir_flops(task.dispatched[0])


def _device(report: dict) -> str:
    return f"{report['device']} (EMULATED: qemu timings, not a phone)" if report["emulated"] else report["device"]


def markdown(report: dict) -> str:
    u, t = report["untuned"], report["tuned"]
    lines = [
        f"# PP-MobileSeg-{report['model']} {report['input_size'][0]}x{report['input_size'][1]} on {_device(report)}",
        "",
        f"{report['threads']} thread(s), {report['upsample']} tail, {report['trials']} trials "
        f"({report['new_trials']} new this run), {report['date']}, `{report['command']}`",
        "",
        "| build | median ms | p10 ms | p90 ms | repeats |",
        "|---|---|---|---|---|",
        f"| untuned | {u['median_ms']:.2f} | {u['p10_ms']:.2f} | {u['p90_ms']:.2f} | {u['repeats']} |",
        f"| tuned | {t['median_ms']:.2f} | {t['p10_ms']:.2f} | {t['p90_ms']:.2f} | {t['repeats']} |",
        "",
        f"Tuned is {report['speedup']:.2f}x faster (tuned / untuned = {1 / report['speedup']:.2f}).",
        "",
    ]
    checks = report["checks"]
    lines += [f"Tuned vs untuned labels: {checks['tuned_vs_untuned']['equal']:.4%} equal, "
              f"{checks['tuned_vs_untuned']['differ_outside_ties']} differ outside top-two ties; "
              f"untuned vs PyTorch: {checks['untuned_vs_pytorch']['equal']:.4%} equal.", ""]
    a = report["ablation"]
    if a.get("interpolate_ms"):
        lines += [f"VIM ablation (tuned builds, sample photograph, K = {a['k']} of {a['classes']} classes present "
                  f"at low resolution): VIM {a['vim_ms']:.2f} ms, interpolate + argmax {a['interpolate_ms']:.2f} ms "
                  f"({a['interpolate_ms'] / a['vim_ms']:.2f}x).", ""]
    g = report.get("gflops")
    if g:
        peak = (f" against a nominal peak of {g['peak_gflops']:.0f} GFLOP/s "
                f"({g['tuned_gflops'] / g['peak_gflops']:.0%})" if g.get("peak_gflops")
                else " (no nominal peak: emulated or unknown device)")
        lines += [f"Network: {g['network_gflop']:.2f} GFLOP (convolutions and matmuls); tuned "
                  f"{g['tuned_gflops']:.1f} GFLOP/s, untuned {g['untuned_gflops']:.1f} GFLOP/s{peak}.", ""]
    if report.get("profile"):
        lines += profile_table(report["profile"], report["untuned"]["median_ms"], report["tuned"]["median_ms"])
    lines += ["| task | calls | MFLOP | untuned ms | tuned ms | speedup | trials |", "|---|---|---|---|---|---|---|"]
    for r in sorted(report["tasks"], key=lambda r: -r["untuned_ms"] * r["calls"]):
        lines.append(f"| {r['task']} | {r['calls']} | {r['flops'] / 1e6:.1f} | {r['untuned_ms']:.3f} | "
                     f"{r['tuned_ms']:.3f} | {r['untuned_ms'] / max(r['tuned_ms'], 1e-9):.2f}x | {r['trials']} |")
    return "\n".join(lines) + "\n"


def _main_parts(rows: list[dict]) -> list[dict]:
    """The parts of the shipped network (the ablation's tail is shown apart)."""
    return [r for r in rows if r["part"] != "tail_interpolate"]


def profile_table(rows: list[dict], untuned_ms: float, tuned_ms: float) -> list[str]:
    main = _main_parts(rows)
    sums = {b: sum(r[f"{b}_ms"] for r in main) for b in ("untuned", "tuned")}
    lines = ["Latency by part of the network (each part timed alone with the inputs it gets from the "
             "photograph):", "", "| part | untuned ms | share | tuned ms | share | speedup |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        u, t = r["untuned_ms"], r["tuned_ms"]
        share = (f"{u / sums['untuned']:.1%} | {t:.3f} | {t / sums['tuned']:.1%}" if r in main
                 else f"- | {t:.3f} | -")
        lines.append(f"| {r['label']} | {u:.3f} | {share} | {u / max(t, 1e-9):.2f}x |")
    lines += [f"| sum of the parts | {sums['untuned']:.2f} | | {sums['tuned']:.2f} | | |",
              f"| end to end | {untuned_ms:.2f} | | {tuned_ms:.2f} | | |", ""]
    return lines


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(report["tasks"], key=lambda r: -r["untuned_ms"] * r["calls"])[:15]
    parts = _main_parts(report.get("profile") or [])
    fig, axes = plt.subplots(1, 3 if parts else 2, figsize=(16 if parts else 11, 4.5), dpi=110,
                             gridspec_kw={"width_ratios": [1, 3, 2] if parts else [1, 3]})
    ax1, ax2 = axes[:2]
    builds = ["untuned", "tuned"] + (["interpolate"] if report["ablation"].get("interpolate_ms") else [])
    values = [report["untuned"]["median_ms"], report["tuned"]["median_ms"]] + (
        [report["ablation"]["interpolate_ms"]] if len(builds) == 3 else [])
    ax1.bar(builds, values, color=["#999999", "#1f77b4", "#ff7f0e"][: len(builds)])
    ax1.set(ylabel="end-to-end median (ms)", title=_device(report).split(" (")[0] + (
        " (emulated)" if report["emulated"] else ""))
    y = range(len(rows))
    ax2.barh([i - 0.2 for i in y], [r["untuned_ms"] * r["calls"] for r in rows], 0.4, label="untuned", color="#999999")
    ax2.barh([i + 0.2 for i in y], [r["tuned_ms"] * r["calls"] for r in rows], 0.4, label="tuned", color="#1f77b4")
    ax2.set_yticks(list(y), [r["task"][:40] for r in rows], fontsize=6)
    ax2.invert_yaxis()
    ax2.set(xlabel="ms per inference (latency x calls)", title="heaviest tasks")
    ax2.legend()
    if parts:
        y = range(len(parts))
        axes[2].barh([i - 0.2 for i in y], [r["untuned_ms"] for r in parts], 0.4, label="untuned", color="#999999")
        axes[2].barh([i + 0.2 for i in y], [r["tuned_ms"] for r in parts], 0.4, label="tuned", color="#1f77b4")
        axes[2].set_yticks(list(y), [r["label"] for r in parts], fontsize=7)
        axes[2].invert_yaxis()
        axes[2].set(xlabel="ms", title="latency by part of the network")
        axes[2].legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_report(directory: str | Path, report: dict) -> None:
    directory = Path(directory)
    write_json(directory / "report.json", report)
    write_text(directory / "report.md", markdown(report))
    _plot(report, directory / "report.png")


def load_report(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such report")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a JSON report ({e})") from None


def compare(a: dict, b: dict) -> str:
    """Two reports side by side (say two devices or two trial budgets)."""
    def row(name: str, fa, fb) -> str:  # noqa: ANN001
        return f"| {name} | {fa(a)} | {fb(b)} |" if fb else f"| {name} | {fa(a)} | {fa(b)} |"

    def ms(key: str):  # noqa: ANN202
        return lambda r: f"{r[key]['median_ms']:.2f}"

    lines = ["| | A | B |", "|---|---|---|",
             row("model", lambda r: r["model"], None), row("device", _device, None),
             row("input", lambda r: "x".join(map(str, r["input_size"])), None),
             row("threads", lambda r: r["threads"], None), row("trials", lambda r: r["trials"], None),
             row("untuned median ms", ms("untuned"), None), row("tuned median ms", ms("tuned"), None),
             row("speedup", lambda r: f"{r['speedup']:.2f}x", None),
             row("VIM / interpolate ms", lambda r: f"{r['ablation']['vim_ms']:.2f} / "
                 f"{r['ablation'].get('interpolate_ms') or float('nan'):.2f}", None)]
    return "\n".join(lines) + "\n"
