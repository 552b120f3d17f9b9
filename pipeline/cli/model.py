"""Commands on the PyTorch model: info, convert-weights, predict, demo."""

from __future__ import annotations

import json
from pathlib import Path

import click

from model.pp_mobileseg import VARIANTS
from model.upsample import OUTPUT_MODES
from pipeline.cli.options import MODEL_OPTION, SIZE_OPTION, WEIGHTS_OPTION, note_weights


@click.command()
@MODEL_OPTION
@SIZE_OPTION
@click.option("--num-classes", type=int, help="Class count (default 150, ADE20K).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info(model_name: str, input_size: str | None, num_classes: int | None, as_json: bool) -> None:
    """Parameters, GFLOPs and per-stage output shapes."""
    from model.pp_mobileseg import build_model
    from model.summary import summarize
    from pipeline.common.inputs import parse_size

    size = parse_size(input_size) if input_size else (512, 512)
    s = summarize(build_model(model_name, num_classes), size)
    if as_json:
        click.echo(json.dumps(s.as_dict()))
        return
    click.echo(f"PP-MobileSeg-{s.model}: {s.num_classes} classes, input {size[0]}x{size[1]}")
    click.echo(f"  trainable parameters  {s.params:,}")
    click.echo(f"  GFLOPs                {s.gflops:.3f}  (conv + matmul, multiply-add = 2 FLOPs)")
    for name, shape in s.stages.items():
        click.echo(f"  {name:<22}{'x'.join(map(str, shape))}")


@click.command("convert-weights")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("-o", "--output", "dst", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the PyTorch state dict (.pt).")
@MODEL_OPTION
def convert_weights(src: Path, dst: Path, model_name: str) -> None:
    """Convert a PaddleSeg .pdparams checkpoint to a PyTorch state dict (no Paddle needed)."""
    import torch

    from model.weights import convert_pdparams, num_classes_of
    from pipeline.common.files import atomic_path

    state = convert_pdparams(src, model_name)
    with atomic_path(dst) as tmp:
        torch.save(state, tmp)
    click.echo(f"wrote {dst}: PP-MobileSeg-{model_name}, {num_classes_of(state)} classes, {len(state)} tensors")


@click.command()
@MODEL_OPTION
@WEIGHTS_OPTION
@click.option("--input", "input_path", required=True, type=click.Path(path_type=Path),
              help="An image, or a normalized float32 [1,3,H,W] .npy tensor.")
@click.option("--mode", type=click.Choice(OUTPUT_MODES), default="vim", show_default=True,
              help="logits: low-res logits; interpolate: bilinear + argmax; vim: Valid Interpolate Module.")
@SIZE_OPTION
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="out.npy (array) or out.png (colour label map).")
def predict(model_name: str, weights: Path | None, input_path: Path, mode: str, input_size: str | None,
            output: Path) -> None:
    """Run the PyTorch model on one input and save its output.

    An image is resized like PaddleSeg's eval transform (or to --input-size) and its
    label map is resized back to the image's own size with nearest neighbour.
    """
    import torch

    from model.image import resize_labels
    from model.weights import load_model
    from pipeline.common.inputs import load_input, parse_size
    from pipeline.common.outputs import check_output_path, save_output

    check_output_path(output, labels=mode != "logits")
    cfg = VARIANTS[model_name]
    x = load_input(input_path, cfg.mean, cfg.std, parse_size(input_size) if input_size else None)  # cheap checks first
    note_weights(weights)
    model = load_model(model_name, weights, output=mode)
    with torch.inference_mode():
        out = model(x.tensor).numpy()
    if mode != "logits":
        out = resize_labels(out[0], x.original_size)
    save_output(output, out, model.cfg.num_classes)
    click.echo(f"wrote {output}: {out.dtype} {list(out.shape)}")


@click.command()
@MODEL_OPTION
@WEIGHTS_OPTION
@click.option("--input", "input_path", type=click.Path(path_type=Path),
              help="A photograph; default: a street scene shipped with scikit-image.")
@click.option("-o", "--output-dir", default="demo", show_default=True, type=click.Path(path_type=Path))
def demo(model_name: str, weights: Path | None, input_path: Path | None, output_dir: Path) -> None:
    """Segment a real photograph with VIM; write a colour label map and an overlay."""
    import torch

    from model.image import colorize, resize_labels, sample_image_path
    from model.weights import load_model
    from pipeline.common.inputs import load_input
    from pipeline.common.outputs import class_shares, overlay, save_png

    note_weights(weights)
    model = load_model(model_name, weights, output="vim")
    x = load_input(input_path or sample_image_path(), model.cfg.mean, model.cfg.std)
    with torch.inference_mode():
        labels = resize_labels(model(x.tensor)[0].numpy(), x.original_size)
    n = model.cfg.num_classes
    save_png(output_dir / "labels.png", colorize(labels, n))
    save_png(output_dir / "overlay.png", overlay(x.image, labels, n))
    click.echo(f"wrote {output_dir}/labels.png and {output_dir}/overlay.png "
               f"(input {x.original_size[0]}x{x.original_size[1]}, model input "
               f"{x.tensor.shape[2]}x{x.tensor.shape[3]})")
    for cid, name, share in class_shares(labels, n)[:10]:
        click.echo(f"  {share:6.1%}  {cid:3d} {name}")


COMMANDS = (info, convert_weights, predict, demo)
