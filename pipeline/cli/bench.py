"""Benchmarks that write ``bench/results/<LLVM cpu>/``: against the peers, and of the VIM kernel."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pipeline.cli.options import THREADS
from pipeline.common.paths import BENCH_WORK, REF_PYTHON, TUNING

OUT_HELP = "Where the results go (default bench/results/<this CPU's LLVM name>, e.g. bench/results/znver4)."


@click.command("bench-peers")
@click.option("--model", type=click.Choice(["tiny", "base"]), default="tiny", show_default=True)
@click.option("--threads", type=THREADS, default="1", show_default=True, help="A thread count, or 'all' (every core).")
@click.option("--repeat", type=click.IntRange(min=1), default=30, show_default=True, help="Timed runs per engine.")
@click.option("--rounds", type=click.IntRange(min=1), default=10, show_default=True,
              help="Rounds the runs are split into (engines alternate within each).")
@click.option("--settle", type=click.FloatRange(min=0), default=0.5, show_default=True,
              help="Seconds of pause before each engine's batch (the previous engine's pool goes idle).")
@click.option("--input-size", default="512x512", show_default=True, metavar="HxW")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help=OUT_HELP)
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=BENCH_WORK,
              help="Prepared engines, logs, label maps (default .cache/bench).")
@click.option("--device", default="host", show_default=True, help="Only host: emulated timings are not comparable.")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A PaddleSeg .pdparams (default .cache/reference/<model>.pdparams).")
@click.option("--ref-python", type=click.Path(dir_okay=False, path_type=Path), default=REF_PYTHON,
              help="The PaddleSeg environment's Python (default .venv-ref).")
@click.option("--tuning-root", type=click.Path(file_okay=False, path_type=Path), default=TUNING,
              help="Where `make tune` keeps its work directories (default ./tuning).")
@click.option("--paddle-backend", type=click.Choice(["onednn", "native"]), default="onednn", show_default=True)
@click.option("--engines", help="Comma-separated subset of the engines (default: all).")
@click.option("--command", "command_line", help="The command to record (make passes its own).")
def bench_peers(model: str, threads: int, repeat: int, rounds: int, settle: float, input_size: str, out: Path | None,
                work: Path, device: str, checkpoint: Path | None, ref_python: Path, tuning_root: Path,
                paddle_backend: str, engines: str | None, command_line: str | None) -> None:
    """TVM untuned/tuned against PyTorch, ONNX Runtime, Paddle, OpenVINO, MNN, LiteRT, ExecuTorch and ncnn
    (`make bench`): logits and label map."""
    from pipeline.bench import peers
    from pipeline.bench.engines import ENGINES
    from pipeline.bench.machine import results_dir
    from pipeline.bench.report import write_results
    from pipeline.common.inputs import parse_size

    peers.check_device(device)
    chosen = tuple(e for e in (engines or ",".join(ENGINES)).split(",") if e)
    if unknown := [e for e in chosen if e not in ENGINES]:
        raise click.BadParameter(f"unknown engines {unknown}; choose from {', '.join(ENGINES)}",
                                 param_hint="--engines")
    s = peers.Settings(model=model, threads=threads, repeat=repeat, rounds=rounds, settle_s=settle,
                       input_size=parse_size(input_size), out=out or results_dir(), work=work,
                       checkpoint=(checkpoint or peers.default_checkpoint(model)).resolve(), ref_python=ref_python,
                       tuning_root=tuning_root.resolve(), engines=chosen, paddle_backend=paddle_backend,
                       command=command_line or "ppmseg " + " ".join(sys.argv[1:]))
    results = peers.run_bench(s, lambda m: click.echo(m, err=True))
    for path in write_results(results, s.out):
        click.echo(str(path))
    if failed := [r["engine"] for r in results["rows"] if r.get("error")]:
        raise click.ClickException(f"{len(failed)} engine(s) failed: {', '.join(failed)} "
                                   "(results written without them)")


@click.command("bench-vim")
@click.option("--threads", type=THREADS, default="1", show_default=True,
              help="TVM threads (and the target's num-cores), or 'all'.")
@click.option("--classes", type=click.IntRange(min=1), default=150, show_default=True)
@click.option("--in-hw", type=int, nargs=2, default=(64, 64), show_default=True, help="Logits rows and columns.")
@click.option("--out-hw", type=int, nargs=2, default=(512, 512), show_default=True, help="Label map size.")
@click.option("--ks", default="1,5,10,20,50,150", show_default=True, help="Classes present, comma-separated.")
@click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=Path), help=OUT_HELP)
def bench_vim(threads: int, classes: int, in_hw: tuple[int, int], out_hw: tuple[int, int], ks: str,
              output_dir: Path | None) -> None:
    """The fused VIM kernel against stock-op VIM and plain upsample + argmax (`make bench-vim`)."""
    from pipeline.bench.machine import results_dir
    from pipeline.bench.vim import markdown, run_vim_bench

    counts = [int(k) for k in ks.split(",") if k.strip()]
    report = run_vim_bench(threads, classes, tuple(in_hw), tuple(out_hw), counts, output_dir or results_dir())
    click.echo(markdown(report))


COMMANDS = (bench_peers, bench_vim)
