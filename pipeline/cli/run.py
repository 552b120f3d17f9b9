"""Commands that run a compiled artifact: run, segment, bench."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from pipeline.cli.options import ARTIFACT_OPTION, DEVICE_OPTION, TRACKER_OPTION

if TYPE_CHECKING:
    import numpy as np


def _input_for(artifact_meta: dict, input_path: Path):  # noqa: ANN202
    """A normalized tensor of the artifact's compiled shape (an image is resized to the
    default entry's; a .npy of a library with several sizes may have any entry's, which the
    runtime checks)."""
    from pipeline.common.inputs import load_input
    from pipeline.compile.artifact import entries

    several = len(entries(artifact_meta)) > 1 and input_path.suffix.lower() == ".npy"
    size = None if several else tuple(artifact_meta["input_shape"][2:])
    return load_input(input_path, tuple(artifact_meta["mean"]), tuple(artifact_meta["std"]), size)


def _entry_input(meta: dict, entry: str | None, input_path: Path):  # noqa: ANN202
    """The function of the entry named ``HxW`` and its input: a .npy of its shape, or an image
    placed in it as the runtime places images. Without ``HxW``: an image resized to the first
    entry, or a .npy of any entry's shape and that entry."""
    function, x, _ = _placed_input(meta, entry, input_path)
    return function, x


def _placed_input(meta: dict, entry: str | None, input_path: Path, image: np.ndarray | None = None):  # noqa: ANN202
    """``_entry_input``, and for an image placed in an entry the part of the label map that is
    the image (None otherwise); ``image``: the input already decoded."""
    from model.image import read_image
    from pipeline.common.inputs import parse_size
    from pipeline.common.shapes import letterbox
    from pipeline.compile.artifact import entries

    listed = entries(meta)
    if entry is None:
        x = _input_for(meta, input_path).tensor.numpy()
        chosen = next((e for e in listed if e["input_shape"] == list(x.shape)), None)
        if chosen is None:
            shapes = " or ".join(str(e["input_shape"]) for e in listed)
            raise click.BadParameter(f"{input_path}: shape {list(x.shape)}, expected {shapes}", param_hint="--input")
        return chosen["main"], x, None
    size = list(parse_size(entry))
    chosen = next((e for e in listed if e["input_shape"][2:] == size), None)
    if chosen is None:
        sizes = ", ".join("x".join(map(str, e["input_shape"][2:])) for e in listed)
        raise click.BadParameter(f"{entry} is not one of the library's input sizes ({sizes})", param_hint="--entry")
    if input_path.suffix.lower() == ".npy":
        from pipeline.common.inputs import load_tensor

        return chosen["main"], load_tensor(input_path, tuple(size)).numpy(), None
    x, placed = letterbox(read_image(input_path) if image is None else image, tuple(size), meta["mean"], meta["std"])
    return chosen["main"], x, placed


def _nearest_entry(meta: dict, image: np.ndarray) -> str:
    """The size (``HxW``) of the entry nearest the image's aspect ratio, where the runtime runs it."""
    from pipeline.common.shapes import nearest_entry
    from pipeline.compile.artifact import entries

    listed = [e["input_shape"][2:] for e in entries(meta)]
    return "x".join(map(str, listed[nearest_entry(*image.shape[:2], listed)]))


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
    input gives a label map at the compiled size in that case (with several input sizes: in
    the entry nearest its aspect ratio, cropped and resized to the image, as here), at the
    image's size here.
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
        from model.image import read_image, resize_labels
        from pipeline.compile.artifact import entries
        from pipeline.deploy.remote import TIE, run_and_compare

        # An image in a library of several sizes goes to its nearest entry, as the runtime places it.
        image = (read_image(input_path) if len(entries(meta)) > 1 and input_path.suffix.lower() != ".npy"
                 else None)
        entry = None if image is None else _nearest_entry(meta, image)
        function, x, placed = _placed_input(meta, entry, input_path, image)
        labels, a = run_and_compare(artifact, device, x, tracker, function)
        if placed is not None:  # as the runtime: the image's part, back at the image's size
            labels = resize_labels(labels[:placed[0], :placed[1]], image.shape[:2])
        where = (f"{device}{' (emulated)' if tracker is None and meta.get('emulated') else ''}"
                 f"{'' if function == 'main' else f' {function}'}")
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
@click.option("--entry", metavar="HxW", help="A library of several input sizes: the size to time (default: "
              "the first); an image is placed in it as the runtime places images.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench(artifact: Path, device: str, tracker: str | None, input_path: Path | None, repeat: int, number: int,
          threads: int | None, entry: str | None, as_json: bool) -> None:
    """Time a compiled library on a device with the VM's time evaluator."""
    from model.image import sample_image_path
    from pipeline.compile.artifact import read_meta
    from pipeline.deploy.remote import benchmark_on_device

    meta = read_meta(artifact)
    function, x = _entry_input(meta, entry, input_path or sample_image_path())
    t = benchmark_on_device(artifact, device, x, tracker, number=number, repeat=repeat, threads=threads,
                            function=function)
    emulated = tracker is None and bool(meta.get("emulated"))
    if as_json:
        click.echo(json.dumps({**t.as_dict(), "device": device, "emulated": emulated}))
        return
    label = f"{device} (EMULATED: qemu timings, not a phone)" if emulated else device
    what = "" if function == "main" else f" {function}"
    click.echo(f"{label}{what}: median {t.median_ms:.2f} ms, p90 {t.p90_ms:.2f} ms over {repeat} repeats of {number} "
               f"runs, {t.threads} thread(s)")



@click.command()
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGE_OR_DIR...", type=click.Path(path_type=Path))
@ARTIFACT_OPTION
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="One image: its colour label map out.png (the overlay goes beside it as out-overlay.png). "
                   "Several images or a directory: the directory that receives <stem>.png and "
                   "<stem>-overlay.png for each.")
@click.option("--labels", "labels_path", type=click.Path(dir_okay=False, path_type=Path),
              help="One image: also save its int32 label map at the image's own size (.npy).")
@click.option("--save-labels", is_flag=True,
              help="Also save each int32 label map beside its colour map, as <stem>.npy (out.npy for one image).")
@click.option("-v", "--verbose", is_flag=True,
              help="Say which of the library's input shapes each image ran in.")
def segment(inputs: tuple[Path, ...], artifact: Path, output: Path, labels_path: Path | None,
            save_labels: bool, verbose: bool) -> None:
    """Segment photographs with a compiled artifact.

    One image file with -o out.png writes out.png and out-overlay.png and prints the classes
    found. Otherwise (several images, a directory of images, or -o naming a directory) each
    image's results go into the directory -o as <stem>.png and <stem>-overlay.png, with the
    library loaded once and a progress bar; a bad file is reported and skipped, and the exit
    code is 1 if any failed.
    """
    from pipeline.deploy.segment import is_single

    if labels_path is not None and save_labels:
        raise click.UsageError("give --labels FILE (one image) or --save-labels, not both")
    if is_single(inputs, output):
        _segment_one(inputs[0], artifact, output, labels_path or (output.with_suffix(".npy") if save_labels else None),
                     verbose)
    else:
        _segment_many(inputs, artifact, output, save_labels, labels_path, verbose)


def _segment_one(image: Path, artifact: Path, output: Path, labels_path: Path | None, verbose: bool) -> None:
    from pipeline.common.outputs import class_shares
    from pipeline.deploy.runtime import load
    from pipeline.deploy.segment import entry_line, segment_image, single_job

    if labels_path is not None and labels_path.suffix.lower() != ".npy":
        raise click.BadParameter(f"{labels_path}: must end in .npy", param_hint="--labels")
    seg = load(artifact)
    job = single_job(image, output, labels_path)
    labels = segment_image(seg, job)
    if verbose:
        click.echo(entry_line(seg, image, labels))
    click.echo(f"wrote {job.colour} and {job.overlay}")
    for cid, name, share in class_shares(labels, seg.num_classes):
        click.echo(f"  {share:6.1%}  {cid:3d} {name}")


def _segment_many(inputs: tuple[Path, ...], artifact: Path, out_dir: Path, save_labels: bool,
                  labels_path: Path | None, verbose: bool) -> None:
    from pipeline.deploy.runtime import load
    from pipeline.deploy.segment import FILE_SUFFIXES, collect_images, plan, segment_all

    if labels_path is not None:
        raise click.UsageError("--labels names one file, for one image; with several use --save-labels")
    if out_dir.suffix.lower() in FILE_SUFFIXES:
        single_file = len(inputs) == 1 and not inputs[0].is_dir()
        raise click.BadParameter(f"{out_dir}: must end in .png" if single_file else
                                 f"{out_dir}: several images are written into a directory; give -o DIR",
                                 param_hint="-o")
    jobs = plan(collect_images(inputs), out_dir, save_labels)  # every refusal before the library loads
    seg = load(artifact)
    out_dir.mkdir(parents=True, exist_ok=True)
    outcome = segment_all(seg, jobs, verbose=verbose)
    click.echo(f"wrote {outcome.segmented} of {outcome.total} images to {out_dir}")
    click.echo(f"{outcome.images_per_second:.2f} images/s: {outcome.segmented} in {outcome.seconds:.2f} s with the "
               "library loaded once (decoding, preprocessing, inference and writing included)")
    if outcome.failed:
        raise click.ClickException(f"{len(outcome.failed)} of {outcome.total} images failed (listed above)")


COMMANDS = (run, segment, bench)
