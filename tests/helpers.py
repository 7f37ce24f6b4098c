"""What several test modules share: NumPy references, tiny models, paths.

Import it as `import helpers` (pytest puts `tests/` on `sys.path`, as it
has no `__init__.py`). Fixtures live in `conftest.py`; plain functions here.
"""

import gzip
import os
import struct
import sys

import keras
import numpy as np

# The recipe scripts' folder: `recipes_on_path()` makes `import distill`,
# `import cli`, ... work in a test module.
RECIPES = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, "recipes"))


def recipes_on_path():
    """Puts `recipes/` first on `sys.path` (once) and returns it."""
    if RECIPES not in sys.path:
        sys.path.insert(0, RECIPES)
    return RECIPES


def to_numpy(tensor):
    return keras.ops.convert_to_numpy(tensor)


def np_softmax(logits, axis=-1):
    shifted = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


def np_kl(p, q):
    """KL(p || q) over the last axis, one value per row."""
    return np.sum(p * (np.log(p) - np.log(q)), axis=-1)


def bn_dropout_model(width, input_dim=8):
    """A Dense-BN-ReLU-Dropout-Dense model: differs in training and inference."""
    return keras.Sequential(
        [
            keras.Input((input_dim,)),
            keras.layers.Dense(16),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(width),
        ]
    )


def save_idx(path, array):
    """Writes `array` (uint8) as a gzipped IDX file, as Fashion-MNIST's."""
    header = struct.pack(
        f">I{array.ndim}I", 2051 if array.ndim == 3 else 2049, *array.shape
    )
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())
