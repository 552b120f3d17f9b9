"""Options several commands share."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import click

from model.pp_mobileseg import VARIANTS

MODEL_OPTION = click.option("--model", "model_name", type=click.Choice(sorted(VARIANTS)), default="tiny",
                            show_default=True, help="PP-MobileSeg variant.")
WEIGHTS_OPTION = click.option("--weights", type=click.Path(dir_okay=False, path_type=Path),
                              help="Converted .pt (or a .pdparams directly); default: fixed random init.")
SIZE_OPTION = click.option("--input-size", "input_size", metavar="HxW",
                           help="Model input size, rows x columns (e.g. 512x512, 512x1024).")
SIZES_OPTION = click.option("--input-size", "input_size", metavar="HxW[,HxW...]|phone",
                            help="Model input size, rows x columns (e.g. 512x512, 512x1024); or several, "
                                 "comma-separated (sides multiples of 32; the library gets an entry each and "
                                 "runs every image in the one nearest its aspect ratio), or a named set (phone: "
                                 "512x512,512x704,704x512,512x928,928x512).")

ARTIFACT_OPTION = click.option("--artifact", required=True, type=click.Path(file_okay=False, path_type=Path),
                               help="A directory written by `ppmseg compile` (model.so + meta.json).")


DEVICE_OPTION = click.option("--device", help="Run on this device profile through its tracker "
                             "(default: this machine, in process).")
TRACKER_OPTION = click.option("--tracker", envvar="TRACKER", metavar="HOST:PORT",
                              help="Your tracker of real devices (env TRACKER); default: the local one, "
                                   "with emulated phones.")




class Threads(click.ParamType):
    """A thread count, or ``all`` for every core this process may use."""

    name = "N|all"

    def convert(self, value, param, ctx) -> int:  # noqa: ANN001 - click's signature
        if isinstance(value, int):
            return value
        if value == "all":
            return len(os.sched_getaffinity(0))
        if not str(value).isdigit() or int(value) < 1:
            self.fail(f"{value!r} is not a positive thread count or 'all'", param, ctx)
        return int(value)


THREADS = Threads()


def graph_options(f):  # noqa: ANN001, ANN201 - a click command function
    """``--layout`` and ``--fuse/--no-fuse``: the graph passes a build runs
    (``pipeline.compile.passes.GraphOptions``), given to the command as ``graph``."""
    from pipeline.compile.passes import SHIPPED

    @functools.wraps(f)
    def command(*args, layout: str, fuse: bool | None, **kwargs):  # noqa: ANN002, ANN003, ANN202
        from pipeline.compile.passes import GraphOptions

        blocked = layout == "blocked"
        try:  # GraphOptions holds the rule; here breaking it is a usage error
            graph = GraphOptions(blocked=blocked, fused=SHIPPED.fused and blocked if fuse is None else fuse)
        except ValueError as e:
            raise click.BadParameter(f"{e} (--layout blocked)", param_hint="--fuse") from None
        return f(*args, graph=graph, **kwargs)

    default = "on" if SHIPPED.fused else "off"
    command = click.option("--fuse/--no-fuse", default=None,
                           help="Each inverted residual's 1x1 expansion computed per tile inside its depthwise "
                                f"convolution (default: {default}; blocked layout only).")(command)
    return click.option("--layout", type=click.Choice(["blocked", "nchw"]), default="blocked", show_default=True,
                        help="Convolutions on channel-blocked tensors (NCHW[b]c, b from the device profile), "
                             "or the plain NCHW graph.")(command)


def note_weights(weights: Path | None) -> None:
    if weights is None:
        click.echo("note: no --weights given; using the fixed random initialization "
                   "(outputs show the pipeline works, not a trained segmentation)", err=True)
