"""Commands that build: compile, package, build-runner."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.cli.options import (
    ARTIFACT_OPTION,
    MODEL_OPTION,
    SIZES_OPTION,
    TRACKER_OPTION,
    WEIGHTS_OPTION,
    graph_options,
    note_weights,
)


@click.command("compile")
@MODEL_OPTION
@click.option("--device", default="host", show_default=True, help="Device profile (rpc/profiles/*.toml).")
@TRACKER_OPTION
@click.option("--upsample", type=click.Choice(["vim", "interpolate"]), default="vim", show_default=True,
              help="Label-map tail: fused VIM kernel, or upsample all classes + argmax.")
@click.option("--frontend", type=click.Choice(["torch", "onnx"]), default="torch", show_default=True,
              help="Import through torch.export or through an ONNX export.")
@WEIGHTS_OPTION
@SIZES_OPTION
@graph_options
@click.option("-o", "--output-dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Rebuild even if an identical artifact exists.")
def compile_command(model_name: str, device: str, tracker: str | None, upsample: str, frontend: str,
                    weights: Path | None, input_size: str | None, graph, output_dir: Path,  # noqa: ANN001
                    force: bool) -> None:
    """Compile the model with TVM into DIR/model.so + DIR/meta.json."""
    from pipeline.common.shapes import parse_sizes
    from pipeline.compile.build import CompileRequest, compile_artifact

    sizes = parse_sizes(input_size) if input_size else ((512, 512),)
    note_weights(weights)
    req = CompileRequest(model=model_name, device=device, upsample=upsample, frontend=frontend, weights=weights,
                         input_size=sizes[0], other_sizes=sizes[1:], tracker=tracker, graph=graph)
    compile_artifact(req, output_dir, force=force, log=click.echo)



@click.command("package")
@ARTIFACT_OPTION
@click.option("--device", default="host", show_default=True,
              help="Device profile the artifact was compiled for (rpc/profiles/*.toml).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The bundle to write (.tar.gz): one folder ppmseg-bundle/ with run.sh and README.txt.")
def package_command(artifact: Path, device: str, output: Path) -> None:
    """Bundle an artifact with the native runner and TVM runtime libraries for its device."""
    from pipeline.deploy.bundle import package

    package(artifact, device, output, log=click.echo)


@click.command("build-runner")
@click.option("-o", "--output", default="build/ppmseg-run", show_default=True,
              type=click.Path(dir_okay=False, path_type=Path), help="Where to write the runner.")
@click.option("--cxx", envvar="CXX", default="g++", show_default=True, help="C++ compiler (env CXX).")
@click.option("--site-packages", type=click.Path(file_okay=False, path_type=Path),
              help="Directory holding the tvm and tvm_ffi wheels (default: this Python's).")
@click.option("--rpath", multiple=True, help="Run-time library path (repeatable; default: the wheels' absolute "
              "lib directories).")
@click.option("--print-command", is_flag=True, help="Print the compile command instead of running it.")
def build_runner_command(output: Path, cxx: str, site_packages: Path | None, rpath: tuple[str, ...],
                         print_command: bool) -> None:
    """Build the native C++ runner (ppmseg-run), linked only to libtvm_runtime and libtvm_ffi."""
    import shlex

    from pipeline.deploy.native import Wheels, build_runner, compile_command

    if print_command:
        click.echo(shlex.join(compile_command(output, Wheels.find(site_packages), cxx, rpath or None)))
        return
    click.echo(str(build_runner(output, cxx=cxx, site_packages=site_packages, rpath=rpath or None)))


COMMANDS = (compile_command, package_command, build_runner_command)
