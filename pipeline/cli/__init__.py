"""``ppmseg``: the command line front door. The commands are thin: they parse, call the
stage that does the work and print; each module here holds one group of them."""

from __future__ import annotations

import sys
import traceback

import click


class CLIGroup(click.Group):
    """Turns every error into one line on stderr and exit code 1 (2 for usage
    errors, as click does); ``--debug`` shows the traceback instead."""

    def invoke(self, ctx: click.Context):  # noqa: ANN201 - click's signature
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as e:  # the boundary where errors become messages
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            raise click.ClickException(error_line(e)) from None


def error_line(e: Exception) -> str:
    """One line for an error: its message's first line (the last one when the message is a
    traceback, as some TVM errors are). Every error the project raises for bad input is a
    ValueError, RuntimeError or OSError; any other type is a bug and is named as such."""
    from pipeline.common.errors import message_line

    line = message_line(e)
    if not line:
        return f"{type(e).__name__} (ppmseg --debug ... shows the traceback)"
    if isinstance(e, (ValueError, RuntimeError, OSError)):
        return line
    return f"{type(e).__name__}: {line} (ppmseg --debug ... shows the traceback)"


@click.group(cls=CLIGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show Python tracebacks on errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """PP-MobileSeg from PyTorch to a tuned native library with Apache TVM."""
    ctx.obj = {"debug": debug}


def _register() -> None:
    """Each module of this package holds one group of commands (``COMMANDS``)."""
    from pipeline.cli import bench, build, devices, evaluate, model, records, run, tune

    for module in (model, build, run, tune, records, devices, bench, evaluate):
        for command in module.COMMANDS:
            main.add_command(command)


_register()

if __name__ == "__main__":
    main()
