"""Official PaddleSeg checkpoints (``.pdparams``) read without Paddle, and converted
PyTorch state dicts.

A ``.pdparams`` written by ``paddle.save`` is a pickle of ``{name: numpy.ndarray}``
(plus bookkeeping entries ending in ``@@``). It is read with an unpickler that only
admits NumPy arrays, so a hostile file cannot run code.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path

import numpy as np
import torch

from model.pp_mobileseg import PPMobileSeg, build_model

# Paddle key -> PyTorch key. The model keeps PaddleSeg's module names; only
# PaddleSeg's short conv attribute and BatchNorm statistics are spelled differently.
RENAME_RULES: tuple[tuple[str, str], ...] = (
    (r"\.c\.", ".conv."),
    (r"\._mean$", ".running_mean"),
    (r"\._variance$", ".running_var"),
)
# PyTorch-only buffers with no Paddle counterpart, filled with their defaults.
DERIVED_SUFFIXES = (".num_batches_tracked",)
CLASSIFIER_BIAS = "decode_head.conv_seg.bias"


class WeightsError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle protocol
        if (module, name) not in self._ALLOWED:
            raise WeightsError(f"refusing to load {module}.{name}: a .pdparams holds only NumPy arrays")
        return super().find_class(module, name)


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0].rstrip(",:") if str(err).strip() else type(err).__name__


def _shorten(keys: list[str], most: int = 4) -> str:
    shown = ", ".join(keys[:most])
    return shown + (f" and {len(keys) - most} more" if len(keys) > most else "")


def read_pdparams(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a PaddleSeg ``.pdparams`` file, by Paddle parameter name."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    data = path.read_bytes()
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
    except WeightsError as e:
        raise WeightsError(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        # A cut pickle ends in EOFError or in "pickle data was truncated", depending on where it was cut.
        kind = "truncated" if isinstance(e, EOFError) or "truncated" in str(e) else "not a Paddle checkpoint"
        raise WeightsError(f"{path}: {kind} ({type(e).__name__}: {_first_line(e)})") from None
    if not isinstance(obj, dict) or not obj:
        raise WeightsError(f"{path}: not a Paddle checkpoint (expected a dict of arrays)")

    # Older Paddle pickling protocols split big arrays into slices listed here.
    for name, info in obj.pop("UnpackBigParamInfor@@", {}).items():
        obj[name] = np.concatenate([obj.pop(s) for s in info["slices"]]).reshape(info["OriginShape"])
    arrays = {k: v for k, v in obj.items() if not k.endswith("@@")}
    bad = [k for k, v in arrays.items() if not isinstance(v, np.ndarray)]
    if bad or not arrays:
        raise WeightsError(f"{path}: not a Paddle checkpoint (non-array entries: {_shorten(bad)})")
    return arrays


def paddle_to_torch_name(key: str) -> str:
    for pattern, repl in RENAME_RULES:
        key = re.sub(pattern, repl, key)
    return key


def num_classes_of(state: dict[str, np.ndarray | torch.Tensor]) -> int | None:
    """The class count a checkpoint was trained for (from the classifier bias)."""
    for key in (CLASSIFIER_BIAS, paddle_to_torch_name(CLASSIFIER_BIAS)):
        if key in state:
            return int(state[key].shape[0])
    return None


def convert_state_dict(paddle_state: dict[str, np.ndarray | torch.Tensor], model: PPMobileSeg
                       ) -> dict[str, torch.Tensor]:
    """Map a Paddle state dict (or an already converted one) onto ``model``'s keys; every
    key on both sides must be used, with equal shapes, or nothing is returned."""
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    unused, mismatched, seen = [], [], set()
    for key, array in paddle_state.items():
        name = paddle_to_torch_name(key)
        seen.add(name)
        if name not in target:
            unused.append(key)
        elif tuple(array.shape) != tuple(target[name].shape):
            mismatched.append(f"{key} {list(array.shape)} vs {list(target[name].shape)}")
        else:
            value = array if isinstance(array, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(array))
            out[name] = value.to(target[name].dtype)
    for name, value in target.items():
        if name.endswith(DERIVED_SUFFIXES):
            out[name] = torch.zeros_like(value)
    missing = [k for k in target if k not in seen and k not in out]

    problems = []
    if mismatched:
        problems.append(f"shape mismatch: {_shorten(mismatched, 2)}")
    if unused:
        problems.append(f"{len(unused)} checkpoint keys fit no parameter: {_shorten(unused)}")
    if missing:
        problems.append(f"{len(missing)} parameters missing from the checkpoint: {_shorten(missing)}")
    if problems:
        raise WeightsError(f"checkpoint does not fit PP-MobileSeg-{model.cfg.name} "
                           f"({model.cfg.num_classes} classes): " + "; ".join(problems))
    return out


def _hint(paddle_state: dict[str, np.ndarray | torch.Tensor], tried: str) -> str:
    """Name the variant and class count a mismatching checkpoint does fit, if any."""
    from model.pp_mobileseg import VARIANTS

    classes = num_classes_of(paddle_state)
    for name in VARIANTS:
        try:
            convert_state_dict(paddle_state, build_model(name, classes))
        except WeightsError:
            continue
        if name != tried:
            return f" (it fits --model {name})"
        return f" (it fits --model {name} with {classes} classes)"
    return ""


def _fit(state: dict[str, np.ndarray | torch.Tensor], model_name: str, path: Path) -> dict[str, torch.Tensor]:
    """``state`` checked and mapped onto the named variant with the checkpoint's class count;
    a mismatch names the keys and, when it fits the other variant, says so."""
    model = build_model(model_name, num_classes_of(state))
    try:
        return convert_state_dict(state, model)
    except WeightsError as e:
        raise WeightsError(f"{path}: {e}{_hint(state, model_name)}") from None


def convert_pdparams(path: str | Path, model_name: str) -> dict[str, torch.Tensor]:
    """Read a ``.pdparams`` and return a state dict for the named variant, with the
    class count taken from the checkpoint."""
    return _fit(read_pdparams(path), model_name, Path(path))


def load_state(path: str | Path, model_name: str) -> dict[str, torch.Tensor]:
    """A state dict from a converted ``.pt`` file or, directly, from a ``.pdparams``."""
    path = Path(path)
    if path.suffix.lower() == ".pdparams":
        return convert_pdparams(path, model_name)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file; all mean "unreadable"
        # torch's own messages run over many lines about zip internals or weights_only.
        raise WeightsError(f"{path}: not a PyTorch state dict (unreadable: truncated, or not written by "
                           f"torch.save; {type(e).__name__})") from None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: not a PyTorch state dict (expected a dict of tensors)")
    # The same key and shape checks as a .pdparams (load_state_dict would fail with a
    # multi-line message that names neither the file nor the variant it fits).
    return _fit(state, model_name, path)


def load_model(model_name: str, weights: str | Path | None, output: str = "logits") -> PPMobileSeg:
    """The named variant with ``weights`` loaded (class count from the file), or with
    the fixed random initialization when ``weights`` is None."""
    if weights is None:
        return build_model(model_name, output=output)
    state = load_state(weights, model_name)
    model = build_model(model_name, num_classes_of(state), output=output)
    model.load_state_dict(state)  # strict: load_state checked every key and shape
    return model
