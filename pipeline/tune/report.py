"""Tuning reports: ``report.json`` (stable keys for tools), ``report.md`` and
``report.png`` in the artifact directory, and side-by-side comparison of two."""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline.common.files import atomic_path, write_json, write_text
from pipeline.common.noise import Difference, difference

# The paper's ablation (Base, Snapdragon 855, Paddle-Lite, one thread): VIM took the latency
# from 465.6 to 234.6 ms, against a plain interpolate + argmax over all 150 classes.
PAPER_VIM = {"baseline_ms": 465.6, "vim_ms": 234.6, "saving": 0.495}
# The tails timed alone in the profile by part (``pipeline.tune.parts``), by ablation name.
ABLATION_TAILS = {"vim": "tail", "interpolate": "tail_interpolate", "interpolate_stock": "tail_interpolate_stock"}


def tuning_report(run, req, tasks, timings: dict, conditions: dict, checks: dict,  # noqa: ANN001
                  untuned: dict[str, float], tuned_tasks: dict[str, float], parts: list[dict], k_present: int,
                  before: int, curve: dict, padding: dict[str, str]) -> dict:
    """The report of a finished run (``pipeline.tune.steps.Run``, its ``TuneRequest`` and
    tasks) from what the steps measured (``timings`` and ``conditions``: ``steps.measure``);
    ``padding``: ``schedules.padding.padding_placements``."""
    from model.summary import summarize
    from rpc.devices import load_profile

    device, work = run.device, run.work
    trials = work.measured_trials()
    per_task = work.trials_per_task(tasks)
    gflop = summarize(run.model, req.input_size).gflops
    peak = None if device.emulated else load_profile(device.name).peak_gflops(device.threads)
    tuned_ms, untuned_ms = timings["tuned"]["median_ms"], timings["untuned"]["median_ms"]
    tails = {p["part"]: p["tuned_ms"] for p in parts}
    return {
        "model": req.model, "device": device.name, "emulated": device.emulated, "threads": device.threads,
        "input_size": list(req.input_size), "input_sizes": [list(s) for s in req.sizes],
        "upsample": run.spec.upsample, "trials": trials,
        "new_trials": trials - before, "target": device.config.target, "work_dir": str(work.path),
        "artifact": str(run.out_dir), "date": time.strftime("%Y-%m-%d %H:%M"),
        "elapsed_s": round(time.perf_counter() - run.t_start, 1), "command": req.command(device.threads, run.budget),
        "untuned": timings["untuned"], "tuned": timings["tuned"], "speedup": untuned_ms / tuned_ms,
        "measurement": conditions, "comparisons": comparisons(timings),
        "tuning_time": {"phases_s": dict(run.phases_s), "search": run.ledger.as_dict()},
        "warm_start": run.warm,
        "checks": checks,
        "tasks": [{"task": t.task_name, "calls": int(t.weight), "flops": float(_flops(t)),
                   "untuned_ms": untuned[t.task_name], "tuned_ms": tuned_tasks[t.task_name],
                   "trials": per_task[t.task_name], "tuned": per_task[t.task_name] > 0,
                   "padding": padding.get(t.task_name)} for t in tasks],
        "profile": parts,
        "curve": curve,
        "gflops": {"network_gflop": gflop, "tuned_gflops": gflop / tuned_ms * 1e3,
                   "untuned_gflops": gflop / untuned_ms * 1e3, "peak_gflops": peak},
        "ablation": {"k": k_present, "classes": run.model.cfg.num_classes, "vim_ms": tuned_ms,
                     "interpolate_ms": timings.get("tuned-interpolate", {}).get("median_ms"),
                     "interpolate": timings.get("tuned-interpolate"),
                     "tails_ms": {name: tails[part] for name, part in ABLATION_TAILS.items() if part in tails},
                     "paper": PAPER_VIM},
    }


# The end-to-end comparisons a report makes: (key, build, against, what the sentence calls them).
COMPARED = (("tuned_vs_untuned", "tuned", "untuned", "the tuned build", "the untuned one"),
            ("vim_vs_interpolate", "tuned", "tuned-interpolate", "VIM", "the plain tail"))


def comparisons(timings: dict) -> dict:
    """Each comparison of ``COMPARED`` whose builds were both timed in the same rounds, as
    ``pipeline.common.noise.Difference.as_dict``."""
    return {key: difference(a_name, b_name, timings[a]["rounds_ms"], timings[b]["rounds_ms"]).as_dict()
            for key, a, b, a_name, b_name in COMPARED if all("rounds_ms" in timings.get(n, {}) for n in (a, b))}


def _sentence(d: dict) -> str:
    return Difference(**{k: d[k] for k in ("a", "b", "ratio", "low", "high", "level", "rounds")}).sentence()


def _flops(task) -> float:  # noqa: ANN001 - a MetaSchedule ExtractedTask
    from tvm.s_tir.analysis import estimate_tir_flops

    return estimate_tir_flops(task.dispatched[0])


def _device(report: dict) -> str:
    return f"{report['device']} (EMULATED: qemu timings, not a phone)" if report["emulated"] else report["device"]


def _entries(report: dict) -> list[str]:
    """A library of several input sizes: what the report's timings cover, and the other sizes'."""
    sizes = report.get("input_sizes", [report["input_size"]])
    if len(sizes) == 1:
        return []
    lines = [f"The library has {len(sizes)} input sizes; the search tuned the kernels of all of them. The timings "
             "and checks below are the default size's; the others, each timed untuned against tuned, interleaved:",
             "", "| input | function | untuned ms | tuned ms | tuned / untuned | tuned vs untuned outside ties |",
             "|---|---|---|---|---|---|"]
    for e in report.get("entries") or []:
        differ = e["checks"]["tuned_vs_untuned"]["differ_outside_ties"]
        lines.append(f"| {e['input_size'][0]}x{e['input_size'][1]} | `{e['function']}` | {e['untuned_ms']:.2f} | "
                     f"{e['tuned_ms']:.2f} | {e['tuned_ms'] / e['untuned_ms']:.3f} | {differ} pixels differ |")
    if memory := report.get("memory"):
        lines += ["", "Memory on this host (a fresh process each, resident beyond Python and TVM): the default "
                  f"entry alone {memory['default_entry_mb']:.0f} MB, every entry in turn "
                  f"{memory['all_entries_mb']:.0f} MB (the VM keeps each entry's activations in its pool); "
                  f"model.so {memory['library_mb']:.1f} MB, the weights stored once."]
    return [*lines, ""]


def markdown(report: dict) -> str:
    lines = [
        f"# PP-MobileSeg-{report['model']} {report['input_size'][0]}x{report['input_size'][1]} on {_device(report)}",
        "",
        *_entries(report),
        f"{report['threads']} thread(s), {report['upsample']} tail, {report['trials']} trials "
        f"({report['new_trials']} new this run), {report['date']}, `{report['command']}`",
        "",
        *end_to_end_lines(report),
    ]
    checks = report["checks"]
    lines += [f"Tuned vs untuned labels: {checks['tuned_vs_untuned']['equal']:.4%} equal, "
              f"{checks['tuned_vs_untuned']['differ_outside_ties']} differ outside top-two ties; "
              f"untuned vs PyTorch: {checks['untuned_vs_pytorch']['equal']:.4%} equal.", ""]
    lines += padding_lines(report["tasks"])
    lines += ablation_lines(report["ablation"], report.get("comparisons"))
    g = report.get("gflops")
    if g:
        peak = (f" against a nominal peak of {g['peak_gflops']:.0f} GFLOP/s "
                f"({g['tuned_gflops'] / g['peak_gflops']:.0%})" if g.get("peak_gflops")
                else " (no nominal peak: emulated or unknown device)")
        lines += [f"Network: {g['network_gflop']:.2f} GFLOP (convolutions and matmuls); tuned "
                  f"{g['tuned_gflops']:.1f} GFLOP/s, untuned {g['untuned_gflops']:.1f} GFLOP/s{peak}.", ""]
    lines += curve_lines(report.get("curve"))
    lines += crossing_lines(report.get("onnxruntime"))
    lines += warm_lines(report.get("warm_start"))
    lines += time_lines(report)
    if report.get("profile"):
        lines += profile_table(report["profile"], report["untuned"]["median_ms"], report["tuned"]["median_ms"])
        lines += parts_lines(report["profile"], report["tuned"])
    lines += ["| task | calls | MFLOP | untuned ms | tuned ms | speedup | trials |", "|---|---|---|---|---|---|---|"]
    for r in sorted(report["tasks"], key=lambda r: -r["untuned_ms"] * r["calls"]):
        lines.append(f"| {r['task']} | {r['calls']} | {r['flops'] / 1e6:.1f} | {r['untuned_ms']:.3f} | "
                     f"{r['tuned_ms']:.3f} | {r['untuned_ms'] / max(r['tuned_ms'], 1e-9):.2f}x | {r['trials']} |")
    return "\n".join(lines) + "\n"


def end_to_end_lines(report: dict) -> list[str]:
    """The builds' timings, how they were measured, and what the differences between them are
    worth against the noise (reports written before the interleaved measurement give the
    speedup alone)."""
    builds = [("untuned", report["untuned"]), ("tuned", report["tuned"])]
    if (plain := report["ablation"].get("interpolate")) is not None:
        builds.append(("tuned, plain tail (VIM ablation)", plain))
    lines = ["| build | median ms | p10 ms | p90 ms | runs |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {t['median_ms']:.2f} | {t['p10_ms']:.2f} | {t['p90_ms']:.2f} | {t['repeats']} |"
              for name, t in builds]
    lines.append("")
    m, compared = report.get("measurement"), report.get("comparisons") or {}
    if m is None or "tuned_vs_untuned" not in compared:
        return [*lines, f"Tuned is {report['speedup']:.2f}x faster (tuned / untuned = {1 / report['speedup']:.2f}; "
                        "timed one build after the other, not interleaved).", ""]
    lines += [conditions_line(m), "", f"End to end, {_sentence(compared['tuned_vs_untuned'])}.", ""]
    return lines + kernels_lines(report)


def conditions_line(m: dict) -> str:
    """How the builds were timed, so a reader can judge the run."""
    pinned = (f"the device's server pinned to core{'s' if len(m['pinned_cpus']) > 1 else ''} "
              f"{', '.join(map(str, m['pinned_cpus']))}" if m.get("pinned_cpus")
              else "the device's server not pinned to cores (a remote device, or more threads than free cores)")
    return (f"Measured interleaved: {m['rounds']} rounds, each build in turn (the order rotating) for "
            f"{m['per_round']} timed run(s) of {m['number']} after a warm-up run; {pinned}; this machine's load "
            f"average (1 min) {m['load_avg_before'][0]:.2f} before and {m['load_avg_after'][0]:.2f} after.")


def kernels_lines(report: dict) -> list[str]:
    """How much of the end-to-end saving the kernels timed alone (the per-task table) explain."""
    tasks = report["tasks"]
    k_untuned = sum(t["untuned_ms"] * t["calls"] for t in tasks)
    k_tuned = sum(t["tuned_ms"] * t["calls"] for t in tasks)
    e_untuned, e_tuned = report["untuned"]["median_ms"], report["tuned"]["median_ms"]
    saved, k_saved = e_untuned - e_tuned, k_untuned - k_tuned
    if len(report.get("input_sizes") or [None]) > 1:
        return [f"The kernels timed alone (the task table: every input size's) sum to {k_untuned:.2f} ms untuned and "
                f"{k_tuned:.2f} ms tuned, called once per entry; the timings end to end are one entry's, so the two "
                "are not compared.", ""]
    line = (f"The kernels timed alone (the task table) sum to {k_untuned:.2f} ms untuned and {k_tuned:.2f} ms tuned: "
            f"{k_saved:.2f} ms saved against {saved:.2f} ms end to end")
    if report["comparisons"]["tuned_vs_untuned"]["within_noise"]:
        return [line + "; end to end the difference is within noise, so how much of it the kernels explain is not "
                "measured.", ""]
    if saved * k_saved <= 0:
        return [line + ": the kernels alone and the whole inference disagree in sign, and no conclusion is drawn.",
                ""]
    return [line + f" ({k_saved / saved:.0%} of it); the tuned kernels make up {k_tuned / e_tuned:.0%} of the tuned "
            "end-to-end time (the rest: the hand-written tail, the VM's own work, and what kernels cost inside the "
            "network but not alone).", ""]


def padding_lines(tasks: list[dict]) -> list[str]:
    """Where the tuned kernels compute their inputs' zero padding (``schedules.padding``)."""
    from schedules.padding import INLINED, PER_TILE, WHOLE

    placed = {t["task"]: t["padding"] for t in tasks if t.get("padding")}
    if not placed:
        return []
    whole = [name for name, where in placed.items() if where == WHOLE]
    counts = ", ".join(f"{list(placed.values()).count(where)} {what}" for where, what in (
        (PER_TILE, "per tile, inside the convolution's loops"), (INLINED, "inlined into its reads"),
        (WHOLE, "written whole before the convolution")))
    return [f"Zero padding of the {len(placed)} tuned kernels that pad their input: {counts}"
            + (f" ({', '.join(whole)})." if whole else "."), ""]


def ablation_lines(a: dict, compared: dict | None = None) -> list[str]:
    """VIM against the best plain tail the project builds: the tails alone and the whole
    inference (interleaved), whether the two agree, beside the stock tail and the paper."""
    if not a.get("interpolate_ms"):
        return []
    head = (f"VIM ablation (tuned builds, sample photograph, K = {a['k']} of {a['classes']} classes present at "
            "low resolution; the plain tail upsamples every class, then takes the argmax, in the same fused kernel).")
    t = a.get("tails_ms") or {}
    tails = ""
    if {"vim", "interpolate", "interpolate_stock"} <= set(t):
        tails = (f" The tails alone: VIM {t['vim']:.2f} ms, plain fused {t['interpolate']:.2f} ms "
                 f"(VIM saves {t['interpolate'] - t['vim']:.2f} ms, "
                 f"{(t['interpolate'] - t['vim']) / a['interpolate_ms']:.1%} of the plain build), plain from stock "
                 f"ops (resize2d + argmax at TVM's default schedule: MetaSchedule finds one candidate for that "
                 f"resize) {t['interpolate_stock']:.2f} ms.")
    d = (compared or {}).get("vim_vs_interpolate")
    if d is None:  # a report from before the interleaved measurement
        whole = (f" End to end (timed one after the other, not interleaved): VIM {a['vim_ms']:.2f} ms, the plain "
                 f"tail {a['interpolate_ms']:.2f} ms.")
    else:
        whole = f" The whole inference, interleaved: {_sentence(d)}." + tails_agree(t, a["interpolate_ms"], d)
    paper = a.get("paper") or PAPER_VIM
    return [head + tails + whole + f" The paper: VIM took {paper['saving']:.1%} off PP-MobileSeg-Base on the phone "
            f"({paper['baseline_ms']} to {paper['vim_ms']} ms, Paddle-Lite, one thread).", ""]


def tails_agree(tails: dict, plain_ms: float, d: dict) -> str:
    """One sentence when the tails timed alone and the interleaved end-to-end ratio disagree
    (in sign, or by more than the interval); nothing when they agree."""
    if not {"vim", "interpolate"} <= set(tails):
        return ""
    expected = 1 - (tails["interpolate"] - tails["vim"]) / plain_ms  # the ratio the tails alone predict
    if d["low"] <= expected <= d["high"]:
        return ""
    if d["within_noise"] and abs(1 - expected) <= d["noise"]:
        return (f" The tails alone predict a ratio of {expected:.3f}: a difference smaller than the end-to-end noise, "
                "which the whole inference cannot resolve.")
    if d["within_noise"]:
        return (f" The tails alone predict a ratio of {expected:.3f}, more than the noise, yet the whole inference "
                "shows no difference: the two disagree, and no conclusion is drawn.")
    if (expected - 1) * (d["ratio"] - 1) < 0:
        return (f" The tails alone predict a ratio of {expected:.3f}, of the other sign: the two disagree, and no "
                "conclusion is drawn.")
    return (f" The tails alone predict a ratio of {expected:.3f}, outside that interval: the whole inference gains "
            f"{'more' if d['ratio'] < expected else 'less'} than the tail alone explains.")


def tuning_curve(tasks, work, untuned: dict[str, float], timings: dict, clock: list) -> dict:  # noqa: ANN001
    """The network's best-kernels sum against trials (from the database; a kernel counts with
    its untuned time until its first record), the end-to-end latency (untuned at 0 trials,
    then tuned at the end of each run on this work directory, kept in its report), and
    ``clock``: when this run's search had how many records (``steps.Run.clock``)."""
    from schedules.tuning import tuning_curve as database_curve

    trials = work.measured_trials()
    earlier = (work.report().get("curve") or {}).get("end_to_end_ms", [])
    runs = {0: timings["untuned"]["median_ms"], **{n: ms for n, ms in earlier if n},
            trials: timings["tuned"]["median_ms"]}
    return {"best_kernels_ms": [list(p) for p in database_curve(tasks, work.path, untuned)],
            "end_to_end_ms": sorted([n, ms] for n, ms in runs.items()),
            "wall_s": clock[:: max(1, len(clock) // 60)] + clock[-1:]}


def curve_lines(curve: dict | None) -> list[str]:
    """One sentence: whether more trials would still help."""
    points = (curve or {}).get("best_kernels_ms") or []
    if len(points) < 3:
        return []
    (n0, _), (nh, half), (n1, last) = points[0], points[len(points) // 2], points[-1]
    nq, quarter = next(p for p in points if p[0] >= 0.75 * n1)
    gain, late = (half - last) / half if half else 0.0, (quarter - last) / quarter if quarter else 0.0
    clock = (curve or {}).get("wall_s") or []
    when = (f" The database held {clock[0][0]:.0f} records {clock[0][1] / 60:.1f} minutes into the run and "
            f"{clock[-1][0]:.0f} at {clock[-1][1] / 60:.1f}." if clock else "")
    return [f"Tuning curve (report.png): the best-kernels sum went from {points[0][1]:.2f} ms at {n0} trials to "
            f"{half:.2f} ms at {nh} and {last:.2f} ms at {n1}; the second half of the trials took off "
            f"{gain:.1%}, the last quarter (from {nq}) {late:.1%}.{when}", ""]


def crossing_lines(crossing: dict | None) -> list[str]:
    """When the run first held a library at least as fast as ONNX Runtime (``pipeline.tune.crossing``)."""
    if not crossing or not crossing.get("measured"):
        return [f"ONNX Runtime not timed: {crossing['why']}.", ""] if crossing else []
    ort = (f"ONNX Runtime (same network and VIM tail, {crossing['threads']} thread(s), timed in turns with each "
           f"library): {crossing['onnxruntime_ms']:.2f} ms.")
    probes = "; ".join(f"{p['records']}: {p['tvm_ms']:.2f} against {p['onnxruntime_ms']:.2f} ms"
                       for p in crossing["probes"])
    if crossing["records"] is None:
        return [f"{ort} Not even the tuned library was as fast ({probes}).", ""]
    when = ("" if crossing["minutes"] is None else
            f", {crossing['minutes']:.1f} minutes into this run")
    return [f"{ort} The first library at least as fast was the database's after {crossing['records']} records"
            f"{when} (binary search over the tuning curve's points; libraries by records in the database: "
            f"{probes}).", ""]


def warm_lines(warm: dict | None) -> list[str]:
    """Where a run begun from the records store took its records from."""
    if not warm:
        return ["Begun from scratch (no records from the store).", ""]
    per_file = ", ".join(f"{n} from `{f}`" for f, n in sorted(warm.get("committed", {}).items()))
    siblings = (f"; {warm['transferred']} of those kernels had no record of their own and took their nearest "
                "sibling's (the same kernel at other shapes)" if warm.get("transferred") else "")
    return [f"Begun from the records store: {warm.get('remeasured', 0)} stored schedules of {warm.get('tasks', 0)} "
            f"kernels re-measured on this device in {warm.get('seconds', 0):.0f} s ({per_file or 'none measured'})"
            f"{siblings}; the search's cost model was trained on the stored records first.", ""]


# What the report calls the steps of a run (``Run.phases_s``).
PHASES = {"import": "import and task extraction", "untuned_tasks": "timing the kernels untuned",
          "warm_start": "re-measuring the records store's schedules",
          "builds": "building the libraries", "measure": "checking and measuring them",
          "profile": "the profile by part", "onnxruntime": "finding when the library matched ONNX Runtime"}


def time_lines(report: dict) -> list[str]:
    """Where the run's wall time went: the search's parts (``schedules.ledger``), then the
    other steps."""
    t = report.get("tuning_time")
    if not t:
        return []
    s, phases = t["search"], t["phases_s"]
    wall = s["wall_s"] or 1e-9
    search = "no search (the budget was spent)" if not s["candidates"] else (
              f"MetaSchedule {s['wall_s']:.0f} s: building {s['candidates']} candidates {s['build_s']:.0f} s "
              f"({s['build_s'] / wall:.0%}, {s['build_batches']} batches), waiting for the device's measurements "
              f"{s['measure_wait_s']:.0f} s ({s['measure_wait_s'] / wall:.0%}), the XGBoost cost model "
              f"{s['cost_model_s']:.0f} s ({s['cost_model_s'] / wall:.0%}), the task scheduler and evolutionary "
              f"search {s['search_s']:.0f} s ({s['search_s'] / wall:.0%})")
    others = ", ".join(f"{label} {phases[k]:.0f} s" for k, label in PHASES.items() if k in phases)
    return [f"Where this run's {report['elapsed_s']:.0f} s went: {search}; {others}.", ""]


def _main_parts(rows: list[dict]) -> list[dict]:
    """The parts of the shipped network (the ablation's tails are shown apart)."""
    return [r for r in rows if not r["part"].startswith("tail_")]


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


def parts_lines(rows: list[dict], tuned: dict) -> list[str]:
    """One sentence when the tuned parts timed alone and the tuned build end to end differ by
    more than that build's own spread (p10 to p90)."""
    total, e2e = sum(r["tuned_ms"] for r in _main_parts(rows)), tuned["median_ms"]
    gap, noise = (total - e2e) / e2e, (tuned["p90_ms"] - tuned["p10_ms"]) / e2e
    if abs(gap) <= noise:
        return []
    return [f"The tuned parts timed alone sum to {total:.2f} ms, {abs(gap):.0%} {'more' if gap > 0 else 'less'} than "
            f"the tuned build end to end ({e2e:.2f} ms), beyond its p10-p90 spread ({noise:.1%}): kernels fused "
            "across part boundaries, per-call overhead and caches differ between the parts alone and the network, "
            "so the shares above are indicative.", ""]


def _log_axis(axis) -> None:  # noqa: ANN001 - a matplotlib Axis
    """Plain numbers on a log axis (not 9.15 x 10^0)."""
    import matplotlib.ticker

    axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    axis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))


def _paired_bars(ax, labels: list[str], untuned: list[float], tuned: list[float], title: str) -> None:  # noqa: ANN001
    """Untuned and tuned side by side on a log axis, so both can be read."""
    y = range(len(labels))
    ax.barh([i - 0.2 for i in y], untuned, 0.4, label="untuned", color="#999999")
    ax.barh([i + 0.2 for i in y], tuned, 0.4, label="tuned", color="#1f77b4")
    ax.set_yticks(list(y), labels, fontsize=6)
    ax.invert_yaxis()
    ax.set_xscale("log")
    _log_axis(ax.xaxis)
    ax.set(xlabel="ms (log scale)", title=title)
    ax.legend(fontsize=7)


def _wall_marks(ax, wall: list[list[float]], best: list[list[float]]) -> None:  # noqa: ANN001 - matplotlib Axes
    """Wall time on the tuning curve: a mark every few minutes into the run where the search's
    database then stood (``curve.wall_s``; a resumed run marks only its own stretch)."""
    import numpy as np

    trials, seconds = (np.asarray(v, float) for v in zip(*wall, strict=True))
    span = seconds[-1] / 60
    step = next((s for s in (1, 2, 5, 10, 15, 30, 60) if span / s <= 8), 120)
    at = [m for m in range(step, int(span) + 1, step) if m * 60 >= seconds[0]]
    if not at:
        return
    x = np.interp([m * 60 for m in at], seconds, trials)
    y = np.interp(x, *(np.asarray(v, float) for v in zip(*best, strict=True)))
    ax.plot(x, y, "k|", markersize=10, label="minutes into this run")
    for m, xi, yi in zip(at, x, y, strict=True):
        ax.annotate(f"{m} min", (xi, yi), textcoords="offset points", xytext=(2, 6), fontsize=7)


def _crossing_marks(ax, crossing: dict | None) -> None:  # noqa: ANN001 - matplotlib Axes
    """ONNX Runtime's latency as a line, the libraries timed against it, and the first at least as fast."""
    if not crossing or not crossing.get("measured"):
        return
    ax.axhline(crossing["onnxruntime_ms"], color="#2ca02c", linestyle=":", label="ONNX Runtime (same run)")
    probes = crossing["probes"]
    ax.plot([p["records"] for p in probes], [p["tvm_ms"] for p in probes], "x", color="#2ca02c",
            label="library at that point, timed against ONNX Runtime")
    first = next((p for p in probes if p["records"] == crossing["records"]), None)
    if first:
        minutes = "" if crossing["minutes"] is None else f", {crossing['minutes']:.1f} min"
        ax.annotate(f"as fast as ONNX Runtime ({first['records']} records{minutes})",
                    (first["records"], first["tvm_ms"]), textcoords="offset points", xytext=(4, -14), fontsize=7,
                    color="#2ca02c")


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(report["tasks"], key=lambda r: -r["tuned_ms"] * r["calls"])[:15]
    parts = _main_parts(report.get("profile") or [])
    fig, axes = plt.subplots(2, 2, figsize=(14, 9), dpi=110)
    ax1, ax2, ax3, ax4 = axes.flat
    builds = {"untuned": report["untuned"]["median_ms"], "tuned": report["tuned"]["median_ms"]}
    if report["ablation"].get("interpolate_ms"):
        builds["tuned, interpolate tail"] = report["ablation"]["interpolate_ms"]
    bars = ax1.bar(list(builds), list(builds.values()), color=["#999999", "#1f77b4", "#ff7f0e"][: len(builds)])
    ax1.bar_label(bars, [f"{v:.1f} ms" for v in builds.values()], fontsize=8)
    ax1.set_yscale("log")
    _log_axis(ax1.yaxis)
    ax1.set(ylabel="end-to-end median, ms (log scale)", title=f"{_device(report).split(' (')[0]}"
            f"{' (emulated)' if report['emulated'] else ''}: {report['speedup']:.1f}x faster tuned")
    _paired_bars(ax2, [r["task"][:40] for r in rows], [r["untuned_ms"] * r["calls"] for r in rows],
                 [r["tuned_ms"] * r["calls"] for r in rows], "heaviest tuned tasks (latency x calls)")
    if parts:
        _paired_bars(ax3, [r["label"] for r in parts], [r["untuned_ms"] for r in parts],
                     [r["tuned_ms"] for r in parts], "latency by part of the network")
    curve = report.get("curve") or {}
    if curve.get("best_kernels_ms"):
        x, y = zip(*curve["best_kernels_ms"], strict=True)
        ax4.plot(x, y, label="best-kernels sum (database)")
        x, y = zip(*curve["end_to_end_ms"], strict=True)
        ax4.plot(x, y, "o--", label="end to end (measured at the end of each run)")
        ax4.set_yscale("log")
        _log_axis(ax4.yaxis)
        ax4.set(xlabel="trials in the database", ylabel="ms (log scale)", title="tuning curve")
        if len(curve.get("wall_s") or []) >= 2:
            _wall_marks(ax4, curve["wall_s"], curve["best_kernels_ms"])
        _crossing_marks(ax4, report.get("onnxruntime"))
        ax4.grid(True, which="both", alpha=0.3)
        ax4.legend(fontsize=7)
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


def _cell(field, report: dict) -> str:  # noqa: ANN001
    """A report written before a key existed shows "-" there."""
    try:
        return str(field(report))
    except (KeyError, IndexError, TypeError):
        return "-"


def column_names(n: int) -> list[str]:
    """What ``ppmseg report`` calls its columns: A, B, C..."""
    return [chr(ord("A") + i) for i in range(n)]


def compare(reports: list[dict], measured: dict | None = None, unmeasured: str | None = None) -> str:
    """Reports side by side, one column each (say two devices, two trial budgets, or the
    arms of an ablation: the work directory's name carries its non-default options), with
    ``measured`` (``pipeline.tune.compare.measure_reports``): their tuned libraries timed against
    each other now, interleaved; or ``unmeasured``: why they could not be."""
    rows = {
        "work directory": lambda r: f"`{Path(r['work_dir']).name}`",
        "model": lambda r: r["model"], "device": _device,
        "input": lambda r: "x".join(map(str, r["input_size"])), "threads": lambda r: r["threads"],
        "trials": lambda r: r["trials"], "last run s": lambda r: f"{r['elapsed_s']:.0f}",
        "untuned median ms (its run)": lambda r: f"{r['untuned']['median_ms']:.2f}",
        "tuned median ms (its run)": lambda r: f"{r['tuned']['median_ms']:.2f}",
        "best-kernels sum ms": lambda r: f"{r['curve']['best_kernels_ms'][-1][1]:.2f}",
        "speedup (its run)": lambda r: f"{r['speedup']:.2f}x",
        "VIM / interpolate ms (its run)": lambda r: f"{r['ablation']['vim_ms']:.2f} / "
                                                    f"{r['ablation'].get('interpolate_ms') or float('nan'):.2f}",
        "date": lambda r: r["date"],
    }
    names = column_names(len(reports))
    table = {name: [_cell(f, r) for r in reports] for name, f in rows.items()}
    if measured:
        timed = [measured["timings"][n] for n in names]
        table["tuned median ms (interleaved, now)"] = [f"{t['median_ms']:.2f}" for t in timed]
        table["tuned p10-p90 ms (interleaved, now)"] = [f"{t['p10_ms']:.2f}-{t['p90_ms']:.2f}" for t in timed]
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(reports) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in table.items()]
    lines += ["", *(f"- {n}: `{r['command']}`" for n, r in zip(names, reports, strict=True)), ""]
    if measured:
        lines += [conditions_line(measured["conditions"]),
                  *(f"- {_sentence(d)}." for d in measured["differences"].values())]
    else:
        lines.append("The rows marked \"its run\" were measured in separate runs, so a difference between them may "
                     f"be the machine's, not the libraries' (not timed against each other now: {unmeasured}).")
    return "\n".join(lines) + "\n"
