"""A fixed random initialization under which the model's output depends on its input.

PyTorch's default init (unit BatchNorm statistics, zero biases) gives logits that
barely change with the input, so a parity check on it proves nothing. Here every
tensor is random, BatchNorm statistics and positional embeddings included, scaled
so activations stay O(1). NumPy only: the PaddleSeg reference generator uses the
same rule on Paddle's names.
"""

from __future__ import annotations

import numpy as np


def random_tensor(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A float32 value for the parameter or buffer called ``name`` (Paddle or PyTorch spelling)."""
    if name.endswith(("_variance", "running_var")):
        value = rng.uniform(0.5, 2.0, shape)
    elif name.endswith(("_mean", "running_mean")):
        value = rng.normal(0.0, 0.3, shape)
    elif name.endswith("pos_embed"):
        value = rng.normal(0.0, 1.0, shape)
    elif len(shape) == 1:  # BatchNorm scale and shift, conv biases
        value = rng.uniform(0.4, 1.0, shape) if name.endswith("weight") else rng.normal(0.0, 0.2, shape)
    else:
        value = rng.normal(0.0, 1.35 / np.sqrt(np.prod(shape[1:])), shape)
    return value.astype(np.float32)
