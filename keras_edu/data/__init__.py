"""Data loading and `tf.data` input pipelines for keras-edu.

Sources return an `ImageSource`: an unbatched `tf.data.Dataset` of
`(uint8 image (H, W, C), int32 label)` plus `num_classes`, `class_names`,
`image_shape` and `size`. `split_by_groups` cuts a source into per-group
subsets for specialist teachers, `balanced_subset` draws a class-balanced
subset of its examples, and `make_pipeline` turns any of them into batches
for `model.fit` on every Keras backend.
"""

from keras_edu.data.directory import from_directory
from keras_edu.data.fashion_mnist import FASHION_MNIST_CLASS_NAMES
from keras_edu.data.fashion_mnist import load_fashion_mnist
from keras_edu.data.groups import split_by_groups
from keras_edu.data.image_source import ImageSource
from keras_edu.data.pipeline import NORMALIZATION_PRESETS
from keras_edu.data.pipeline import make_pipeline
from keras_edu.data.sources import from_arrays
from keras_edu.data.sources import from_tfds
from keras_edu.data.subsets import balanced_subset

__all__ = [
    "FASHION_MNIST_CLASS_NAMES",
    "ImageSource",
    "NORMALIZATION_PRESETS",
    "balanced_subset",
    "from_arrays",
    "from_directory",
    "from_tfds",
    "load_fashion_mnist",
    "make_pipeline",
    "split_by_groups",
]
