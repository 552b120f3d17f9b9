"""A minimal Python runtime for compiled artifacts: ``load(DIR)(image) -> labels``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.image import ImageError, normalize_image, resize_labels
from pipeline.common.errors import message_line
from pipeline.common.shapes import letterbox, nearest_entry
from pipeline.common.tvm_log import quiet_tvm
from pipeline.compile.artifact import LIBRARY, ArtifactError, entries, verify


@dataclass(frozen=True)
class Entry:
    """One input shape of a library and its two functions."""

    input_shape: tuple[int, int, int, int]
    main: str
    logits: str

    @property
    def size(self) -> tuple[int, int]:
        return self.input_shape[2], self.input_shape[3]


class CompiledSegmenter:
    """A loaded ``model.so``. Call it with a uint8 RGB ``[H, W, 3]`` image of any size
    (grey ``[H, W]`` and RGBA ``[H, W, 4]`` are converted) or a normalized float32
    ``[1, 3, h, w]`` array of a compiled shape (label map at that shape). Returns int32
    labels ``[H, W]``.

    An image goes through PaddleSeg's eval transforms: with one compiled shape, resized to
    it; with several (``entry_for``), resized keeping its aspect ratio into the entry
    nearest that ratio and padded below and to the right, the padding cropped off the label
    map. The label map is resized back to the image with nearest neighbour."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.meta = verify(self.directory)  # before importing TVM: a bad artifact fails in a moment

        import tvm
        from tvm import relax

        self.input_shape = tuple(self.meta["input_shape"])  # the default entry's
        self.input_size = self.input_shape[2:]
        self.entries = [Entry(tuple(e["input_shape"]), e["main"], e["logits"]) for e in entries(self.meta)]
        self.mean, self.std = tuple(self.meta["mean"]), tuple(self.meta["std"])
        self._tvm = tvm
        self._dev = tvm.cpu(0)
        lib = self.directory / LIBRARY
        try:
            with quiet_tvm():
                self._lib = tvm.runtime.load_module(str(lib))
            self._vm = relax.VirtualMachine(self._lib, self._dev)
        except Exception as e:  # noqa: BLE001 - TVM raises several types; all mean "not our library"
            detail = message_line(e) or type(e).__name__
            raise ArtifactError(f"{lib}: not a loadable ppmseg library ({detail})") from None

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    def entry_for(self, height: int, width: int) -> Entry:
        """The entry an image of ``height`` x ``width`` runs in: the one nearest its aspect ratio."""
        return self.entries[nearest_entry(height, width, [e.size for e in self.entries])]

    def run_tensor(self, x: np.ndarray, function: str = "main") -> np.ndarray:
        """Run an entry's ``main`` or ``logits`` on a normalized input of that entry's shape."""
        entry = next((e for e in self.entries if e.input_shape == tuple(x.shape)), None)
        if x.dtype != np.float32 or entry is None:
            raise ImageError(f"expected float32 {self._shapes()}, got {x.dtype} {list(x.shape)}")
        if not np.isfinite(x).all():
            raise ImageError("input contains NaN or infinite values")
        out = self._vm[getattr(entry, function)](self._tvm.runtime.tensor(np.ascontiguousarray(x), self._dev))
        return out.numpy()

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Low-resolution logits ``[1, C, h, w]`` for a normalized input."""
        return self.run_tensor(x, "logits")

    def __call__(self, image_or_tensor: np.ndarray) -> np.ndarray:
        array = np.asarray(image_or_tensor)  # also a PIL image or a CPU torch tensor
        if array.dtype == np.uint8:
            return resize_labels(self._image_labels(array), array.shape[:2])
        if array.dtype != np.float32:
            raise ImageError(f"expected a uint8 RGB image [H, W, 3] or a normalized float32 "
                             f"{self._shapes()} tensor, got {array.dtype} {list(array.shape)}")
        return self.run_tensor(array)[0]

    def _shapes(self) -> str:
        return " or ".join(str(list(e.input_shape)) for e in self.entries)

    def _image_labels(self, image: np.ndarray) -> np.ndarray:
        """The label map of a uint8 image at its place in its entry, before resizing back."""
        if len(self.entries) == 1:
            return self.run_tensor(normalize_image(image, self.input_size, self.mean, self.std).numpy())[0]
        entry = self.entry_for(*image.shape[:2])
        x, (h, w) = letterbox(image, entry.size, self.mean, self.std)
        return self.run_tensor(x)[0][:h, :w]


def load(directory: str | Path) -> CompiledSegmenter:
    """Load and verify an artifact directory (``model.so`` + ``meta.json``)."""
    return CompiledSegmenter(directory)
