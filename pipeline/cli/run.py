"""Commands that run a compiled artifact: run, segment, bench."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline.cli.options import ARTIFACT_OPTION, DEVICE_OPTION, TRACKER_OPTION


def _input_for(artifact_meta: dict, input_path: Path):  # noqa: ANN202
    """A normalized tensor of the artifact's compiled shape (an image is resized to it)."""
    from pipeline.common.inputs import load_input

    size = tuple(artifact_meta["input_shape"][2:])
    return load_input(input_path, tuple(artifact_meta["mean"]), tuple(artifact_meta["std"]), size)


@click.command()
@ARTIFACT_OPTION
@click.option("--input", "input_path", required=True, type=click.Path(path_type=Path),
              help="A normalized float32 [1,3,H,W] .npy of the compiled shape, or an image.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="labels.npy (int32 label map) or labels.png.")
@DEVICE_OPTION
@TRACKER_OPTION
def run(artifact: Path, input_path: Path, output: Path, device: str | None, tracker: str | None) -> None:
    """Run a compiled library and save the label map.

    With --device the library is uploaded through the tracker and run there, and its
    label map is compared with the same model run by PyTorch on this machine. An image
    input gives a label map at the compiled size in that case, at the image's size here.
    """
    from pipeline.common.outputs import check_output_path, save_output
    from pipeline.compile.artifact import read_meta

    check_output_path(output, labels=True)
    meta = read_meta(artifact)
    if device is None:
        from model.image import read_image
        from pipeline.deploy.runtime import load

        seg = load(artifact)
        labels = seg(_input_for(meta, input_path).tensor.numpy() if input_path.suffix.lower() == ".npy"
                     else read_image(input_path))
    else:
        from pipeline.deploy.remote import TIE, run_and_compare

        labels, a = run_and_compare(artifact, device, _input_for(meta, input_path).tensor.numpy(), tracker)
        where = f"{device}{' (emulated)' if tracker is None and meta.get('emulated') else ''}"
        click.echo(f"{where} vs PyTorch on this machine: {a.equal:.4%} of pixels equal, "
                   f"{a.differ_outside_ties} differ outside top-two ties (< {TIE:g})")
        if not a.ok:
            raise click.ClickException(f"{a.differ_outside_ties} pixels differ from the host run outside ties")
    save_output(output, labels, int(meta["num_classes"]))
    click.echo(f"wrote {output}: int32 {list(labels.shape)}")


@click.command()
@ARTIFACT_OPTION
@click.option("--device", default="host", show_default=True, help="Device profile to time on (through its tracker).")
@TRACKER_OPTION
@click.option("--input", "input_path", type=click.Path(path_type=Path),
              help="Image or .npy to time with (default: the sample photograph).")
@click.option("--repeat", default=10, show_default=True, help="Timed repeats (after one warm-up run).")
@click.option("--number", default=3, show_default=True, help="Runs averaged within each repeat.")
@click.option("--threads", type=int, help="Threads on the device (default: the profile's).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench(artifact: Path, device: str, tracker: str | None, input_path: Path | None, repeat: int, number: int,
          threads: int | None, as_json: bool) -> None:
    """Time a compiled library on a device with the VM's time evaluator."""
    from model.image import sample_image_path
    from pipeline.compile.artifact import read_meta
    from pipeline.deploy.remote import benchmark_on_device

    meta = read_meta(artifact)
    x = _input_for(meta, input_path or sample_image_path()).tensor.numpy()
    t = benchmark_on_device(artifact, device, x, tracker, number=number, repeat=repeat, threads=threads)
    emulated = tracker is None and bool(meta.get("emulated"))
    if as_json:
        click.echo(json.dumps({**t.as_dict(), "device": device, "emulated": emulated}))
        return
    label = f"{device} (EMULATED: qemu timings, not a phone)" if emulated else device
    click.echo(f"{label}: median {t.median_ms:.2f} ms, p90 {t.p90_ms:.2f} ms over {repeat} repeats of {number} "
               f"runs, {t.threads} thread(s)")



@click.command()
@click.argument("image", type=click.Path(path_type=Path))
@ARTIFACT_OPTION
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Colour label map (.png); the overlay goes beside it as <name>-overlay.png.")
@click.option("--labels", "labels_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also save the int32 label map at the image's own size (.npy).")
def segment(image: Path, artifact: Path, output: Path, labels_path: Path | None) -> None:
    """Segment a photograph with a compiled artifact; print the classes found."""
    from model.image import colorize, read_image
    from pipeline.common.outputs import class_shares, overlay, save_array, save_png
    from pipeline.deploy.runtime import load

    if output.suffix.lower() != ".png":
        raise click.BadParameter(f"{output}: must end in .png", param_hint="-o")
    if labels_path is not None and labels_path.suffix.lower() != ".npy":
        raise click.BadParameter(f"{labels_path}: must end in .npy", param_hint="--labels")
    seg = load(artifact)
    photo = read_image(image)
    labels = seg(photo)
    n = seg.num_classes
    overlay_path = output.with_name(f"{output.stem}-overlay.png")
    save_png(output, colorize(labels, n))
    save_png(overlay_path, overlay(photo, labels, n))
    if labels_path is not None:
        save_array(labels_path, labels)
    click.echo(f"wrote {output} and {overlay_path}")
    for cid, name, share in class_shares(labels, n):
        click.echo(f"  {share:6.1%}  {cid:3d} {name}")


COMMANDS = (run, segment, bench)
