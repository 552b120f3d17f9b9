"""Write PaddleSeg 2.8 reference checkpoints and outputs for the parity tests.

Runs in the reference virtual environment (paddlepaddle + paddleseg), never in the
project's own: ``make reference``. For Tiny and Base it writes a ``.pdparams`` in
which every tensor (BatchNorm statistics and positional embeddings included) is
random, and the reference model's outputs for fixed inputs at several sizes.

Output layout in OUT_DIR:
  <model>.pdparams                  randomized official-format checkpoint
  <model>-<H>x<W>.npz               input, low-res logits, labels and tie margins
  <model>-<H>x<W>.full.npy          full-resolution logits [1, 150, H, W] float32
  photo.npz                         PaddleSeg's eval transforms applied to --photo
  manifest.json                     versions, parameter counts, files
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import types

import numpy as np

# The randomization rule lives in the project (NumPy only, importable here).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from model.random_init import random_tensor  # noqa: E402

SIZES = ((512, 512), (512, 1024), (360, 480))  # (H, W): 512x512, 1024x512, 480x360
SEED = 20231


def import_paddleseg():
    # paddleseg imports visualdl for training logs only; the model does not need it.
    sys.modules.setdefault("visualdl", types.ModuleType("visualdl"))
    import paddle
    from paddleseg.models.backbones.strideformer import MobileSeg_Base, MobileSeg_Tiny
    from paddleseg.models.pp_mobileseg import PPMobileSeg

    return paddle, PPMobileSeg, {
        # The official ADE20K configs of PaddleSeg 2.8.
        "tiny": lambda: MobileSeg_Tiny(inj_type="AAM", out_feat_chs=[32, 64, 128]),
        "base": lambda: MobileSeg_Base(inj_type="AAMSx8", out_feat_chs=[64, 128, 192]),
    }


def smooth_noise(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A [1, 3, h, w] input with image-like structure (large blobs plus fine noise),
    so that many classes win somewhere and VIM has work to do."""
    coarse = rng.normal(0.0, 2.0, (3, h // 32 + 2, w // 32 + 2))
    ys = np.linspace(0, coarse.shape[1] - 1.001, h)
    xs = np.linspace(0, coarse.shape[2] - 1.001, w)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    c = coarse
    blobs = (c[:, y0][:, :, x0] * (1 - fy) * (1 - fx) + c[:, y0 + 1][:, :, x0] * fy * (1 - fx)
             + c[:, y0][:, :, x0 + 1] * (1 - fy) * fx + c[:, y0 + 1][:, :, x0 + 1] * fy * fx)
    return (blobs + rng.normal(0.0, 0.3, (3, h, w)))[None].astype("float32")


def top2_margin(logits: np.ndarray) -> np.ndarray:
    """Per pixel, best minus second-best logit over the channel axis of [C, H, W]."""
    top = np.partition(logits, -2, axis=0)[-2:]
    return (top[1] - top[0]).astype(np.float32)


def write_photo_reference(photo: str, out: str) -> None:
    """PaddleSeg's own ADE20K eval transforms (from the PP-MobileSeg configs) on a photo."""
    import paddleseg.transforms as T

    transforms = T.Compose([
        T.Resize(target_size=[2048, 512], keep_ratio=True, size_divisor=32),
        T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])
    data = transforms({"img": photo})
    np.savez(out, input=data["img"][None].astype("float32"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--photo", required=True, help="a real photograph for the preprocessing check")
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)

    paddle, PPMobileSeg, backbones = import_paddleseg()
    paddle.set_device("cpu")
    rng = np.random.default_rng(SEED)
    manifest = {"paddle": paddle.__version__, "seed": SEED, "models": {}}

    for name, make_backbone in backbones.items():
        model = PPMobileSeg(num_classes=150, backbone=make_backbone(), upsample="vim")
        model.eval()
        state = {k: random_tensor(k, tuple(v.shape), rng) for k, v in model.state_dict().items()}
        model.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
        ckpt = os.path.join(args.out_dir, f"{name}.pdparams")
        paddle.save(model.state_dict(), ckpt)

        entry = {
            "checkpoint": os.path.basename(ckpt),
            "trainable_params": int(sum(p.numel() for p in model.parameters() if not p.stop_gradient)),
            "state_dict_entries": len(state),
            "outputs": [],
        }
        for h, w in SIZES:
            x = smooth_noise(h, w, rng)
            with paddle.no_grad():
                xt = paddle.to_tensor(x)
                low = model.decode_head(model.backbone(xt)).numpy()
                vim = model(xt)[0].numpy()
                model.upsample = "intepolate"  # (sic) PaddleSeg's spelling
                full = model(xt)[0].numpy()
                model.upsample = "vim"
            present = np.unique(low[0].argmax(0))
            stem = f"{name}-{h}x{w}"
            np.save(os.path.join(args.out_dir, f"{stem}.full.npy"), full)
            np.savez(
                os.path.join(args.out_dir, f"{stem}.npz"),
                input=x,
                low_logits=low,
                labels=full[0].argmax(0).astype("int32"),
                margin=top2_margin(full[0]),
                vim_labels=vim.astype("int32"),
                vim_margin=top2_margin(full[0][present]) if len(present) > 1 else np.full((h, w), np.inf, "float32"),
                present=present.astype("int64"),
            )
            entry["outputs"].append({"size": [h, w], "stem": stem, "k": int(len(present)),
                                     "logit_absmax": float(np.abs(low).max())})
            print(f"{stem}: K={len(present)} |low logits| max {np.abs(low).max():.3f}", flush=True)
        manifest["models"][name] = entry

    write_photo_reference(args.photo, os.path.join(args.out_dir, "photo.npz"))
    with open(os.path.join(args.out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)


if __name__ == "__main__":
    main()
