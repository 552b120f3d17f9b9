"""Options several commands share."""

from __future__ import annotations

from pathlib import Path

import click

from model.pp_mobileseg import VARIANTS

MODEL_OPTION = click.option("--model", "model_name", type=click.Choice(sorted(VARIANTS)), default="tiny",
                            show_default=True, help="PP-MobileSeg variant.")
WEIGHTS_OPTION = click.option("--weights", type=click.Path(dir_okay=False, path_type=Path),
                              help="Converted .pt (or a .pdparams directly); default: fixed random init.")
SIZE_OPTION = click.option("--input-size", "input_size", metavar="HxW",
                           help="Model input size, rows x columns (e.g. 512x512, 512x1024).")

ARTIFACT_OPTION = click.option("--artifact", required=True, type=click.Path(file_okay=False, path_type=Path),
                               help="A directory written by `ppmseg compile` (model.so + meta.json).")


DEVICE_OPTION = click.option("--device", help="Run on this device profile through its tracker "
                             "(default: this machine, in process).")
TRACKER_OPTION = click.option("--tracker", envvar="TRACKER", metavar="HOST:PORT",
                              help="Your tracker of real devices (env TRACKER); default: the local one, "
                                   "with emulated phones.")




def note_weights(weights: Path | None) -> None:
    if weights is None:
        click.echo("note: no --weights given; using the fixed random initialization "
                   "(outputs show the pipeline works, not a trained segmentation)", err=True)
