"""Commands of the records store: records export, import, list."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def records() -> None:
    """The records store (schedules/records): the best schedules of earlier tuning runs, that
    make tune re-measures and starts from."""


@records.command("export")
@click.argument("work_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the file here (default: into the store, schedules/records/).")
def export_cmd(work_dir: Path, output: Path | None) -> None:
    """Export a finished tuning run's best records (WORK_DIR, as `ppmseg tune --list` shows it)."""
    from pipeline.tune.records import export_records

    click.echo(str(export_records(work_dir, output)))


@records.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def import_cmd(file: Path) -> None:
    """Put a records file (from `ppmseg records export -o`) into the store."""
    from pipeline.tune.records import import_records

    click.echo(str(import_records(file)))


@records.command("list")
@click.option("--device", default="host", show_default=True, help="Say which files serve this device profile.")
@click.option("--threads", type=click.IntRange(min=1), help="The device's thread count (default: the profile's).")
def list_cmd(device: str, threads: int | None) -> None:
    """The store's files, and which of them make tune would use for DEVICE."""
    from pipeline.tune.records import store_rows
    from rpc.devices import load_profile

    profile = load_profile(device)
    rows = store_rows(profile.tvm_target(threads=threads or profile.threads))
    if not rows:
        click.echo("the records store is empty")
    for r in rows:
        s = r["source"]
        why = "usable" if r["unusable"] is None else f"not usable: {r['unusable']}"
        click.echo(f"{r['file']}: {s['model']} {s['input'][0]}x{s['input'][1]}, {s['threads']} thread(s), "
                   f"{s['trials']} trials on {s['date']}; {r['workloads']} kernels, {r['records']} records; {why}")


COMMANDS = (records,)
