"""``ppmseg``: the command line front door."""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import click

from model.pp_mobileseg import VARIANTS
from model.upsample import OUTPUT_MODES

MODEL_OPTION = click.option("--model", "model_name", type=click.Choice(sorted(VARIANTS)), default="tiny",
                            show_default=True, help="PP-MobileSeg variant.")
WEIGHTS_OPTION = click.option("--weights", type=click.Path(dir_okay=False, path_type=Path),
                              help="Converted .pt (or a .pdparams directly); default: fixed random init.")
SIZE_OPTION = click.option("--input-size", "input_size", metavar="HxW",
                           help="Model input size, rows x columns (e.g. 512x512, 512x1024).")


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
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if not lines:
        return f"{type(e).__name__} (ppmseg --debug ... shows the traceback)"
    line = lines[-1] if lines[0].startswith("Traceback") else lines[0]
    if isinstance(e, (ValueError, RuntimeError, OSError)):
        return line
    return f"{type(e).__name__}: {line} (ppmseg --debug ... shows the traceback)"


@click.group(cls=CLIGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show Python tracebacks on errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """PP-MobileSeg from PyTorch to a tuned native library with Apache TVM."""
    ctx.obj = {"debug": debug}


def _note_weights(weights: Path | None) -> None:
    if weights is None:
        click.echo("note: no --weights given; using the fixed random initialization "
                   "(outputs show the pipeline works, not a trained segmentation)", err=True)


@main.command()
@MODEL_OPTION
@SIZE_OPTION
@click.option("--num-classes", type=int, help="Class count (default 150, ADE20K).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info(model_name: str, input_size: str | None, num_classes: int | None, as_json: bool) -> None:
    """Parameters, GFLOPs and per-stage output shapes."""
    from model.pp_mobileseg import build_model
    from model.summary import summarize
    from pipeline.inputs import parse_size

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


@main.command("convert-weights")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("-o", "--output", "dst", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the PyTorch state dict (.pt).")
@MODEL_OPTION
def convert_weights(src: Path, dst: Path, model_name: str) -> None:
    """Convert a PaddleSeg .pdparams checkpoint to a PyTorch state dict (no Paddle needed)."""
    import torch

    from model.weights import convert_pdparams, num_classes_of
    from pipeline.files import atomic_path

    state = convert_pdparams(src, model_name)
    with atomic_path(dst) as tmp:
        torch.save(state, tmp)
    click.echo(f"wrote {dst}: PP-MobileSeg-{model_name}, {num_classes_of(state)} classes, {len(state)} tensors")


@main.command()
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
    from pipeline.inputs import load_input, parse_size
    from pipeline.outputs import check_output_path, save_output

    check_output_path(output, labels=mode != "logits")
    cfg = VARIANTS[model_name]
    x = load_input(input_path, cfg.mean, cfg.std, parse_size(input_size) if input_size else None)  # cheap checks first
    _note_weights(weights)
    model = load_model(model_name, weights, output=mode)
    with torch.inference_mode():
        out = model(x.tensor).numpy()
    if mode != "logits":
        out = resize_labels(out[0], x.original_size)
    save_output(output, out, model.cfg.num_classes)
    click.echo(f"wrote {output}: {out.dtype} {list(out.shape)}")


@main.command()
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
    from pipeline.inputs import load_input
    from pipeline.outputs import class_shares, overlay, save_png

    _note_weights(weights)
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


ARTIFACT_OPTION = click.option("--artifact", required=True, type=click.Path(file_okay=False, path_type=Path),
                               help="A directory written by `ppmseg compile` (model.so + meta.json).")


DEVICE_OPTION = click.option("--device", help="Run on this device profile through its tracker "
                             "(default: this machine, in process).")
TRACKER_OPTION = click.option("--tracker", envvar="TRACKER", metavar="HOST:PORT",
                              help="Your tracker of real devices (env TRACKER); default: the local one, "
                                   "with emulated phones.")


@main.command("compile")
@MODEL_OPTION
@click.option("--device", default="host", show_default=True, help="Device profile (rpc/profiles/*.toml).")
@TRACKER_OPTION
@click.option("--upsample", type=click.Choice(["vim", "interpolate"]), default="vim", show_default=True,
              help="Label-map tail: fused VIM kernel, or upsample all classes + argmax.")
@click.option("--frontend", type=click.Choice(["torch", "onnx"]), default="torch", show_default=True,
              help="Import through torch.export or through an ONNX export.")
@WEIGHTS_OPTION
@SIZE_OPTION
@click.option("-o", "--output-dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Rebuild even if an identical artifact exists.")
def compile_command(model_name: str, device: str, tracker: str | None, upsample: str, frontend: str,
                    weights: Path | None, input_size: str | None, output_dir: Path, force: bool) -> None:
    """Compile the model with TVM into DIR/model.so + DIR/meta.json."""
    from pipeline.compile import CompileRequest, compile_artifact
    from pipeline.inputs import parse_size

    _note_weights(weights)
    req = CompileRequest(model=model_name, device=device, upsample=upsample, frontend=frontend, weights=weights,
                         input_size=parse_size(input_size) if input_size else (512, 512), tracker=tracker)
    compile_artifact(req, output_dir, force=force, log=click.echo)


def _input_for(artifact_meta: dict, input_path: Path):  # noqa: ANN202
    """A normalized tensor of the artifact's compiled shape (an image is resized to it)."""
    from pipeline.inputs import load_input

    size = tuple(artifact_meta["input_shape"][2:])
    return load_input(input_path, tuple(artifact_meta["mean"]), tuple(artifact_meta["std"]), size)


@main.command()
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
    from pipeline.artifact import read_meta
    from pipeline.outputs import check_output_path, save_output

    check_output_path(output, labels=True)
    meta = read_meta(artifact)
    if device is None:
        from model.image import read_image
        from pipeline.runtime import load

        seg = load(artifact)
        labels = seg(_input_for(meta, input_path).tensor.numpy() if input_path.suffix.lower() == ".npy"
                     else read_image(input_path))
    else:
        from pipeline.remote import agreement, host_reference, run_on_device

        x = _input_for(meta, input_path).tensor.numpy()
        labels = run_on_device(artifact, device, x, tracker)
        ref, margin = host_reference(meta, x)
        a = agreement(labels, ref, margin)
        where = f"{device}{' (emulated)' if tracker is None and meta.get('emulated') else ''}"
        click.echo(f"{where} vs PyTorch on this machine: {a.equal:.4%} of pixels equal, "
                   f"{a.differ_outside_ties} differ outside top-two ties (< {1e-5:g})")
        if not a.ok:
            raise click.ClickException(f"{a.differ_outside_ties} pixels differ from the host run outside ties")
    save_output(output, labels, int(meta["num_classes"]))
    click.echo(f"wrote {output}: int32 {list(labels.shape)}")


@main.command()
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
    from pipeline.artifact import read_meta
    from pipeline.remote import benchmark_on_device

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


@main.command()
@MODEL_OPTION
@click.option("--device", default="host", show_default=True, help="Device profile to tune for.")
@TRACKER_OPTION
@click.option("--trials", type=click.IntRange(min=0), help="Trial budget for the network's kernels, counting what "
              "the work directory has (default: see README).")
@click.option("--ablation-trials", type=click.IntRange(min=0), help="Trial budget for the kernels only the "
              "interpolate+argmax ablation uses, counted the same way (default: see README).")
@SIZE_OPTION
@click.option("--threads", type=int, help="Threads on the device (default: the profile's).")
@WEIGHTS_OPTION
@click.option("--device-wait", type=click.FloatRange(min=0), help="Seconds to wait for a lost device to come "
              "back before stopping (default PPMSEG_DEVICE_WAIT or 300).")
@click.option("--work-root", type=click.Path(file_okay=False, path_type=Path), help="Where the work directories "
              "(databases) live (default: ./tuning).")
@click.option("--out-root", type=click.Path(file_okay=False, path_type=Path), help="Where the tuned artifacts "
              "go (default: ./build).")
@click.option("--list", "list_only", is_flag=True, help="List the tuning work directories and stop.")
def tune(model_name: str, device: str, tracker: str | None, trials: int | None, ablation_trials: int | None,
         input_size: str | None,
         threads: int | None, weights: Path | None, device_wait: float | None, work_root: Path | None,
         out_root: Path | None, list_only: bool) -> None:
    """Tune the model's kernels with MetaSchedule on a device, build untuned and tuned
    libraries, check they agree, measure both and write the report.

    The last line printed is the tuned artifact's directory."""
    from pipeline.inputs import parse_size
    from pipeline.tune import TuneRequest, list_work_dirs, run_tune

    if list_only:
        rows = list_work_dirs(work_root)
        if not rows:
            click.echo("no tuning work directories yet (make tune)")
        for r in rows:
            best = f"{r['tuned_ms']:.2f} ms tuned, {r['untuned_ms']:.2f} ms untuned" if r["tuned_ms"] else "no report"
            click.echo(f"{r['work_dir']}: {r['trials']} trials, {best}{' (emulated)' if r['emulated'] else ''}")
        return
    given = {"trials": trials, "ablation_trials": ablation_trials, "device_wait": device_wait}
    req = TuneRequest(model=model_name, device=device, tracker=tracker, threads=threads, weights=weights,
                      input_size=parse_size(input_size) if input_size else (512, 512),
                      **{k: v for k, v in given.items() if v is not None})
    # The weights note comes once the run holds its work directory (a refused run prints one line).
    result = run_tune(req, log=click.echo, work_root=work_root, out_root=out_root,
                      on_start=lambda: _note_weights(weights))
    click.echo(f"report: {result.artifact}/report.md")
    click.echo(str(result.artifact))


@main.command()
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
def report(a: Path, b: Path) -> None:
    """Compare two tuning reports (report.json or their artifact directories) side by side."""
    from pipeline.report import compare, load_report

    click.echo(compare(load_report(a), load_report(b)), nl=False)


@main.command("package")
@ARTIFACT_OPTION
@click.option("--device", default="host", show_default=True,
              help="Device profile the artifact was compiled for (rpc/profiles/*.toml).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The bundle to write (.tar.gz): one folder ppmseg-bundle/ with run.sh and README.txt.")
def package_command(artifact: Path, device: str, output: Path) -> None:
    """Bundle an artifact with the native runner and TVM runtime libraries for its device."""
    from pipeline.package import package

    package(artifact, device, output, log=click.echo)


@main.group()
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


@main.command()
@TRACKER_OPTION
def devices(tracker: str | None) -> None:
    """What the tracker offers: keys with their servers, free, busy and pending."""
    from rpc import servers

    click.echo(servers.format_devices(servers.devices(tracker)))


@main.command()
@click.argument("image", type=click.Path(path_type=Path))
@ARTIFACT_OPTION
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Colour label map (.png); the overlay goes beside it as <name>-overlay.png.")
@click.option("--labels", "labels_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also save the int32 label map at the image's own size (.npy).")
def segment(image: Path, artifact: Path, output: Path, labels_path: Path | None) -> None:
    """Segment a photograph with a compiled artifact; print the classes found."""
    from model.image import colorize, read_image
    from pipeline.outputs import class_shares, overlay, save_array, save_png
    from pipeline.runtime import load

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


@main.command("evaluate")
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

    from pipeline import evaluate as ev
    from pipeline.files import atomic_path
    from pipeline.inputs import parse_size

    if (artifact is None) == (model_name is None):
        raise click.UsageError("give exactly one of --artifact DIR and --model M")
    if artifact is not None and (weights or mode or input_size):
        raise click.UsageError("--weights, --mode and --input-size go with --model (an artifact has its own)")
    if output is not None and output.suffix.lower() != ".json":
        raise click.BadParameter(f"{output}: must end in .json", param_hint="-o")
    samples = ev.list_samples(dataset, limit)
    if artifact is not None:
        predict = ev.artifact_predictor(artifact)
        meta = predict.meta
        ev.check_classes(predict.num_classes, str(artifact))
        if meta.get("weights_sha256") is None:
            click.echo("note: the artifact was compiled without --weights (fixed random initialization)", err=True)
        mode = meta["upsample"]
        evaluated = {"backend": "tvm", "artifact": str(artifact), "model": meta["variant"],
                     "weights_sha256": meta.get("weights_sha256"), "upsample": mode,
                     "input_size": list(predict.input_size), "device": meta["device"], "tuned": meta.get("tuned"),
                     "so_sha256": meta["so_sha256"]}
        what = f"{artifact} (PP-MobileSeg-{meta['variant']}, TVM, {mode}, {'x'.join(map(str, predict.input_size))})"
    else:
        from model.weights import load_model
        from pipeline.artifact import sha256_file

        _note_weights(weights)
        mode = mode or "paddleseg"
        size = parse_size(input_size) if input_size else None
        model = load_model(model_name, weights, output="logits")
        ev.check_classes(model.cfg.num_classes, f"PP-MobileSeg-{model_name}")
        predict = ev.pytorch_predictor(model, mode, size)
        evaluated = {"backend": "pytorch", "model": model_name, "weights": str(weights) if weights else None,
                     "weights_sha256": sha256_file(weights) if weights else None, "mode": mode,
                     "input_size": list(size) if size else "paddleseg-eval"}
        what = f"PP-MobileSeg-{model_name} (PyTorch, {mode}, {input_size or 'PaddleSeg eval size'})"
    start = time.perf_counter()
    acc = ev.evaluate(samples, predict)
    doc = ev.result_document(acc, dataset, evaluated, ev.PROTOCOLS[mode], limit, time.perf_counter() - start)
    if output is not None:
        with atomic_path(output) as tmp:
            tmp.write_text(json.dumps(doc, indent=2) + "\n")
    accuracy = "n/a" if doc["pixel_accuracy"] is None else f"{doc['pixel_accuracy']:.2%}"
    click.echo(f"{what} on {acc.images} images: mIoU {doc['miou']:.2%}, pixel accuracy {accuracy}, "
               f"{doc['classes_present']} of {acc.num_classes} classes present")
    if output is not None:
        click.echo(f"wrote {output}")


if __name__ == "__main__":
    main()
