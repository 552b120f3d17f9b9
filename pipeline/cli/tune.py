"""Commands of tuning: tune, report."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.cli.options import (
    MODEL_OPTION,
    SIZES_OPTION,
    THREADS,
    TRACKER_OPTION,
    WEIGHTS_OPTION,
    graph_options,
    note_weights,
)
from pipeline.tune.job import DEFAULT_SEARCH, DEFAULT_TRIALS, MEASURE_ROUNDS, SEARCHES


@click.command()
@MODEL_OPTION
@click.option("--device", default="host", show_default=True, help="Device profile to tune for.")
@TRACKER_OPTION
@click.option("--trials", type=click.IntRange(min=0), help="Trial budget for the network's kernels, counting what "
              "the work directory has (default "
              + ", ".join(f"{n} for {m}" for m, n in DEFAULT_TRIALS.items()) + ").")
@SIZES_OPTION
@click.option("--threads", type=THREADS, help="Threads on the device, or 'all' (this machine's cores; default: "
              "the profile's). Each count has its own work directory and tuned artifact.")
@WEIGHTS_OPTION
@click.option("--device-wait", type=click.FloatRange(min=0), help="Seconds to wait for a lost device to come "
              "back before stopping (default PPMSEG_DEVICE_WAIT or 300).")
@click.option("--work-root", type=click.Path(file_okay=False, path_type=Path), help="Where the work directories "
              "(databases) live (default: ./tuning).")
@click.option("--out-root", type=click.Path(file_okay=False, path_type=Path), help="Where the tuned artifacts "
              "go (default: ./build).")
@graph_options
@click.option("--search", type=click.Choice(SEARCHES), default=DEFAULT_SEARCH, show_default=True,
              help="plain: one MetaSchedule call over every kernel, heaviest first; focused: one round for "
              "every kernel, then the rest of the trials for the kernels holding 80% of the time; light: plain "
              "with a quarter of MetaSchedule's evolutionary population and half its generations (each other "
              "than plain in a work directory of its own).")
@click.option("--from-scratch", is_flag=True, help="Ignore the records store (schedules/records): search from "
              "nothing, as before the store, in a work directory of its own.")
@click.option("--profile/--no-profile", default=True, show_default=True, help="Time every part of the network "
              "untuned and tuned for the report (two more builds).")
@click.option("--list", "list_only", is_flag=True, help="List the tuning work directories and stop.")
def tune(model_name: str, device: str, tracker: str | None, trials: int | None, input_size: str | None,
         threads: int | None, weights: Path | None, device_wait: float | None, work_root: Path | None,
         out_root: Path | None, graph, search: str, from_scratch: bool, profile: bool, list_only: bool) -> None:  # noqa: ANN001
    """Tune the model's kernels with MetaSchedule on a device, build untuned and tuned
    libraries, check they agree, measure both and write the report.

    The last line printed is the tuned artifact's directory."""
    from pipeline.bench.engines.ort_engine import bound_run
    from pipeline.common.shapes import parse_sizes
    from pipeline.tune.job import TuneRequest, run_tune
    from pipeline.tune.workdir import list_work_dirs

    if list_only:
        rows = list_work_dirs(work_root)
        if not rows:
            click.echo("no tuning work directories yet (make tune)")
        for r in rows:
            best = f"{r['tuned_ms']:.2f} ms tuned, {r['untuned_ms']:.2f} ms untuned" if r["tuned_ms"] else "no report"
            click.echo(f"{r['work_dir']}: {r['trials']} trials, {best}{' (emulated)' if r['emulated'] else ''}")
        return
    sizes = parse_sizes(input_size) if input_size else ((512, 512),)
    given = {"trials": trials, "device_wait": device_wait}
    req = TuneRequest(model=model_name, device=device, tracker=tracker, threads=threads, weights=weights,
                      graph=graph, search=search, profile=profile, from_scratch=from_scratch,
                      input_size=sizes[0], other_sizes=sizes[1:],
                      **{k: v for k, v in given.items() if v is not None})
    # The weights note comes once the run holds its work directory (a refused run prints one line).
    result = run_tune(req, log=click.echo, work_root=work_root, out_root=out_root,
                      on_start=lambda: note_weights(weights), peer=bound_run)
    click.echo(f"report: {result.artifact}/report.md")
    click.echo(str(result.artifact))


@click.command()
@click.argument("reports", nargs=-1, required=True, type=click.Path(path_type=Path))
@TRACKER_OPTION
@click.option("--measure/--no-measure", default=True, show_default=True, help="Time the reports' tuned libraries "
              "against each other now, interleaved, on their device (when they are here and share device, threads, "
              "model and input size).")
@click.option("--rounds", type=click.IntRange(min=1), default=MEASURE_ROUNDS, show_default=True,
              help="Rounds of the interleaved timing.")
def report(reports: tuple[Path, ...], tracker: str | None, measure: bool, rounds: int) -> None:
    """Tuning reports (report.json or their artifact directories) side by side, one column each;
    their tuned libraries timed against each other, interleaved."""
    from pipeline.tune.compare import measure_reports, unmeasurable
    from pipeline.tune.report import column_names, compare, load_report

    if len(reports) < 2:
        raise click.UsageError("give at least two reports to compare")
    loaded = [load_report(r) for r in reports]
    why = unmeasurable(loaded, tracker) if measure else "--no-measure"
    measured = None
    if why is None:
        measured = measure_reports(loaded, column_names(len(loaded)), tracker, rounds,
                                   log=lambda m: click.echo(m, err=True))
    click.echo(compare(loaded, measured, why), nl=False)


COMMANDS = (tune, report)
