"""Compiled artifacts on a device through its tracker: run, compare with the host, time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.upsample import segment_logits, upsample
from model.weights import load_model
from pipeline.compile.artifact import LIBRARY, ArtifactError, read_meta, sha256_file, verify_for_device

TIE = 1e-5  # label differences where the top two logits are closer than this are ties


def _library_on(directory: str | Path, device: str, tracker: str | None) -> Path:
    """The checked ``model.so`` of an artifact for ``device``, with local servers started
    when no user tracker is given."""
    from rpc import servers

    verify_for_device(directory, device)
    if tracker is None:
        servers.ensure_local(device)
    return Path(directory) / LIBRARY


def run_on_device(directory: str | Path, device: str, x: np.ndarray, tracker: str | None = None,
                  function: str = "main") -> np.ndarray:
    """Upload ``model.so``, run ``function`` (an entry's ``main``) on the normalized input,
    bring the labels back."""
    from rpc import session

    return session.run_on_device(_library_on(directory, device, tracker), x, device, tracker=tracker,
                                 function=function)[0]


def run_and_compare(directory: str | Path, device: str, x: np.ndarray, tracker: str | None = None,
                    function: str = "main") -> tuple[np.ndarray, Agreement]:
    """The device's label map for ``x`` and how it agrees with PyTorch on this machine."""
    labels = run_on_device(directory, device, x, tracker, function)
    return labels, agreement(labels, *host_reference(read_meta(directory), x))


def benchmark_on_device(directory: str | Path, device: str, x: np.ndarray, tracker: str | None = None,
                        number: int = 10, repeat: int = 5, threads: int | None = None,
                        function: str = "main"):  # noqa: ANN201
    from rpc import session

    return session.benchmark_on_device(_library_on(directory, device, tracker), x, device, tracker=tracker,
                                       function=function, number=number, repeat=repeat, threads=threads)


@dataclass(frozen=True)
class Agreement:
    equal: float  # share of pixels with the same label
    differ_outside_ties: int  # pixels that differ where the reference has no near-tie

    @property
    def ok(self) -> bool:
        return self.differ_outside_ties == 0


def host_reference(meta: dict, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same model run with PyTorch on this machine: labels and the top-two margin of
    the upsampled logits (over the classes VIM keeps, when it is VIM)."""
    weights = meta.get("weights")
    if meta.get("weights_sha256") and (weights is None or not Path(weights).is_file()
                                       or sha256_file(weights) != meta["weights_sha256"]):
        raise ArtifactError(f"the weights this artifact was built from are not at {weights} any more")
    model = load_model(meta["variant"], weights)
    size = tuple(x.shape[2:])  # the entry x is the shape of
    with torch.inference_mode():
        logits = model(torch.from_numpy(x))
        labels = segment_logits(logits, size, meta["upsample"])[0].numpy()
        channels = torch.unique(logits.argmax(1)) if meta["upsample"] == "vim" else torch.arange(logits.shape[1])
        full = upsample(logits[:, channels], size)[0]
    if full.shape[0] < 2:
        return labels, np.full(size, np.inf, np.float32)
    top = full.topk(2, dim=0).values
    return labels, (top[0] - top[1]).numpy()


def agreement(labels: np.ndarray, reference: np.ndarray, margin: np.ndarray) -> Agreement:
    differ = labels != reference
    return Agreement(float(1.0 - differ.mean()), int((differ & (margin >= TIE)).sum()))
