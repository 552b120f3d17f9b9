"""From low-resolution logits to what the model returns: logits, or a label map by
plain interpolation or by the Valid Interpolate Module (VIM)."""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F

OutputMode = Literal["logits", "interpolate", "vim"]
OUTPUT_MODES: tuple[str, ...] = get_args(OutputMode)

# The paper (and PaddleSeg) only use VIM with at least this many classes; with few
# classes most of them are present anyway and the gather costs more than it saves.
VIM_MIN_CLASSES = 30


def upsample(logits: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize with ``align_corners=False`` (PaddleSeg's default)."""
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def interpolate_labels(logits: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Upsample all classes, then argmax: the baseline the paper's VIM replaces."""
    return upsample(logits, size).argmax(1).to(torch.int32)


def vim_labels(logits: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Valid Interpolate Module.

    The classes that win somewhere in the low-resolution argmax (over the whole
    batch, as PaddleSeg does) are the only candidates: only those channels are
    upsampled, and the winner among them is mapped back to its class id.
    """
    present = torch.unique(logits.argmax(1))  # sorted class ids, length K
    winners = upsample(logits.index_select(1, present), size).argmax(1)
    return present[winners].to(torch.int32)


def segment_logits(logits: torch.Tensor, size: tuple[int, int] | torch.Size, mode: OutputMode) -> torch.Tensor:
    """Apply an output mode to low-resolution logits for an input of ``size``."""
    if mode == "logits":
        return logits
    if mode == "vim" and logits.shape[1] >= VIM_MIN_CLASSES:
        return vim_labels(logits, size)
    return interpolate_labels(logits, size)
