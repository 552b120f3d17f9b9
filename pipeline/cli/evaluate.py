"""``ppmseg evaluate``."""

from __future__ import annotations

from pathlib import Path

import click

from model.pp_mobileseg import VARIANTS
from pipeline.cli.options import WEIGHTS_OPTION, note_weights


@click.command("evaluate")
@click.option("--artifact", type=click.Path(file_okay=False, path_type=Path),
              help="Evaluate a compiled artifact (model.so + meta.json) on this machine.")
@click.option("--model", "model_name", type=click.Choice(sorted(VARIANTS)), help="Evaluate the PyTorch model.")
@WEIGHTS_OPTION
@click.option("--mode", type=click.Choice(["paddleseg", "vim", "interpolate"]),
              help="--model only. paddleseg (default): PaddleSeg's val.py (logits bilinear to the image size, "
                   "argmax); vim / interpolate: the model's label map, nearest to the image size (an artifact's way).")
@click.option("--input-size", "input_size", metavar="HxW",
              help="--model only: run every image at this size (default: PaddleSeg's eval size of each image).")
@click.option("--dataset", required=True, type=click.Path(path_type=Path),
              help="A folder with ADEChallengeData2016/{images,annotations}/validation (or that folder itself).")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N images (sorted by name).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write the result (.json).")
def evaluate_command(artifact: Path | None, model_name: str | None, weights: Path | None, mode: str | None,
                     input_size: str | None, dataset: Path, limit: int | None, output: Path | None) -> None:
    """mIoU, per-class IoU and pixel accuracy on ADE20K validation, as PaddleSeg computes them."""
    import time

    from pipeline.common.files import write_json
    from pipeline.common.inputs import parse_size
    from pipeline.evaluate import record
    from pipeline.evaluate.dataset import list_samples
    from pipeline.evaluate.metric import evaluate
    from pipeline.evaluate.predictors import PROTOCOLS

    if (artifact is None) == (model_name is None):
        raise click.UsageError("give exactly one of --artifact DIR and --model M")
    if artifact is not None and (weights or mode or input_size):
        raise click.UsageError("--weights, --mode and --input-size go with --model (an artifact has its own)")
    if output is not None and output.suffix.lower() != ".json":
        raise click.BadParameter(f"{output}: must end in .json", param_hint="-o")
    samples = list_samples(dataset, limit)  # a bad dataset is refused before any model is loaded
    if artifact is not None:
        subject = record.artifact_subject(artifact)
        if subject.random_weights:
            click.echo("note: the artifact was compiled without --weights (fixed random initialization)", err=True)
    else:
        note_weights(weights)
        subject = record.model_subject(model_name, weights, mode, parse_size(input_size) if input_size else None)
    start = time.perf_counter()
    acc = evaluate(samples, subject.predict)
    doc = record.result_document(acc, dataset, subject.evaluated, PROTOCOLS[subject.mode], limit,
                                 time.perf_counter() - start)
    if output is not None:
        write_json(output, doc, indent=2)
    accuracy = "n/a" if doc["pixel_accuracy"] is None else f"{doc['pixel_accuracy']:.2%}"
    click.echo(f"{subject.description} on {acc.images} images: mIoU {doc['miou']:.2%}, pixel accuracy {accuracy}, "
               f"{doc['classes_present']} of {acc.num_classes} classes present")
    if output is not None:
        click.echo(f"wrote {output}")


COMMANDS = (evaluate_command,)
