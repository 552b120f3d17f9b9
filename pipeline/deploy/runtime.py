"""A minimal Python runtime for compiled artifacts: ``load(DIR)(image) -> labels``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model.image import ImageError, normalize_image, resize_labels
from pipeline.common.errors import message_line
from pipeline.common.tvm_log import quiet_tvm
from pipeline.compile.artifact import LIBRARY, ArtifactError, verify


class CompiledSegmenter:
    """A loaded ``model.so``. Call it with a uint8 RGB ``[H, W, 3]`` image of any size
    (grey ``[H, W]`` and RGBA ``[H, W, 4]`` are converted; resized and normalized as
    PaddleSeg's eval transforms do, label map resized back with nearest neighbour) or a
    normalized float32 ``[1, 3, h, w]`` array of the compiled shape (label map at that
    shape). Returns int32 labels ``[H, W]``."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.meta = verify(self.directory)  # before importing TVM: a bad artifact fails in a moment

        import tvm
        from tvm import relax

        self.input_shape = tuple(self.meta["input_shape"])
        self.input_size = self.input_shape[2:]
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

    def run_tensor(self, x: np.ndarray, function: str = "main") -> np.ndarray:
        """Run a compiled function on a normalized input of the compiled shape."""
        if x.dtype != np.float32 or tuple(x.shape) != self.input_shape:
            raise ImageError(f"expected float32 {list(self.input_shape)}, got {x.dtype} {list(x.shape)}")
        if not np.isfinite(x).all():
            raise ImageError("input contains NaN or infinite values")
        out = self._vm[function](self._tvm.runtime.tensor(np.ascontiguousarray(x), self._dev))
        return out.numpy()

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Low-resolution logits ``[1, C, h, w]`` for a normalized input."""
        return self.run_tensor(x, "logits")

    def __call__(self, image_or_tensor: np.ndarray) -> np.ndarray:
        array = np.asarray(image_or_tensor)  # also a PIL image or a CPU torch tensor
        if array.dtype == np.uint8:
            x = normalize_image(array, self.input_size, self.mean, self.std).numpy()
            labels = self.run_tensor(x)[0]
            return resize_labels(labels, array.shape[:2])
        if array.dtype != np.float32:
            raise ImageError(f"expected a uint8 RGB image [H, W, 3] or a normalized float32 "
                             f"{list(self.input_shape)} tensor, got {array.dtype} {list(array.shape)}")
        return self.run_tensor(array)[0]


def load(directory: str | Path) -> CompiledSegmenter:
    """Load and verify an artifact directory (``model.so`` + ``meta.json``)."""
    return CompiledSegmenter(directory)
