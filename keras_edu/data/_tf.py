"""TensorFlow, imported on first use.

`keras_edu.data` builds `tf.data` pipelines (Keras accepts them on every
backend), but `load_fashion_mnist` and the rest of `keras_edu` do not need
TensorFlow. Importing it lazily keeps `import keras_edu.data` cheap and lets
JAX or PyTorch users without TensorFlow load arrays, and it turns a missing
install into a message that says which extra to install.
"""

import importlib


class _LazyTensorFlow:
    _module = None

    def __getattr__(self, name):
        if _LazyTensorFlow._module is None:
            try:
                _LazyTensorFlow._module = importlib.import_module("tensorflow")
            except ImportError as error:
                raise ImportError(
                    "keras_edu.data pipelines use `tf.data`, which needs "
                    "TensorFlow. Install it with "
                    "`pip install 'keras-edu[datasets]'` (or tensorflow-cpu)."
                ) from error
        return getattr(_LazyTensorFlow._module, name)


tf = _LazyTensorFlow()
