"""Commands for devices: the local tracker and its servers, what a tracker offers, the emulator."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.cli.options import TRACKER_OPTION


@click.group()
def tracker() -> None:
    """The local RPC tracker and its device servers (real TVM RPC on 127.0.0.1)."""


@tracker.command("start")
@click.option("--device", help="Also start servers for this device (host, or sd855 = emulated).")
@click.option("--servers", "count", type=int, help="How many servers for --device (a phone farm: several).")
@click.option("--threads", type=int, help="Thread pool of each server (default: the profile's).")
def tracker_start(device: str | None, count: int | None, threads: int | None) -> None:
    """Start the tracker (reused if running) and, with --device, its servers."""
    from rpc import servers

    rec = servers.start_tracker()
    click.echo(f"tracker on 127.0.0.1:{rec.port} (pid {rec.pid})")
    if device:
        for r in servers.start_servers(device, count=count, threads=threads):
            click.echo(f"{r.name}: key {r.key}, port {r.port}, {r.threads} thread(s)"
                       f"{' (emulated)' if r.emulated else ''}")


@tracker.command("stop")
@click.argument("name", required=False)
def tracker_stop(name: str | None) -> None:
    """Stop everything started here (or one process by NAME or key)."""
    from rpc import servers

    stopped = servers.stop(name)
    click.echo("stopped " + (", ".join(stopped) if stopped else "nothing"))


@tracker.command("status")
def tracker_status() -> None:
    """The processes started here: name, pid, port, key, state, log."""
    from rpc import servers

    click.echo(servers.format_status(servers.status()))


@click.command()
@TRACKER_OPTION
def devices(tracker: str | None) -> None:
    """What the tracker offers: keys with their servers, free, busy and pending."""
    from rpc import servers

    click.echo(servers.format_devices(servers.devices(tracker)))


@click.command()
@click.option("--dir", "root", type=click.Path(file_okay=False, path_type=Path),
              help="Cache directory (default: $PPMSEG_EMULATOR_DIR or .cache/emulator).")
@click.option("--cpu", default="cortex-a76", show_default=True, help="qemu -cpu.")
@click.option("--force", is_flag=True, help="Provision again even if the stamp matches.")
def emulator(root: Path | None, cpu: str, force: bool) -> None:
    """Provision the emulated SD855 (qemu, cross g++, arm64 Python, aarch64 wheels) and verify it."""
    import time

    from rpc.emulator import provision

    t0 = time.perf_counter()
    emu, info, how = provision(cpu, root, force, log=lambda m: click.echo(m, err=True))
    click.echo(f"emulator ready at {emu.root} ({how}; {time.perf_counter() - t0:.1f} s in all): {info}")


COMMANDS = (tracker, devices, emulator)
