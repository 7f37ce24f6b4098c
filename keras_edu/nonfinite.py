"""Non-finite values: where a NaN comes from, said before or when it appears.

A NaN pixel makes the loss NaN on TensorFlow and PyTorch and training goes
on; a teacher trained into NaN does the same. `Distiller.fit` checks
NumPy inputs for non-finite values and runs every teacher on the first
batch before training, so both fail at once with a ValueError that names
`x` or the teacher. During training, `TerminateOnNaN` stops at the first
non-finite loss and names the logged terms that went non-finite.
"""

import logging

import keras
import numpy as np
from keras import ops

__all__ = ["TerminateOnNaN", "check_finite_inputs", "check_teachers_finite"]

logger = logging.getLogger("keras_edu")


def check_finite_inputs(x, name="x"):
    """Raises a ValueError naming `name` if the float array `x` holds NaN or Inf.

    Anything but a floating-point NumPy array (a dataset, a dict of
    inputs, integer images) is left alone.

    Example:

    ```python
    import numpy as np
    from keras_edu.nonfinite import check_finite_inputs

    x = np.zeros((4, 2), "float32"); x[2, 1] = np.nan
    try:
        check_finite_inputs(x)
    except ValueError as error:
        print(error)  # `x` holds 1 non-finite values (NaN or Inf), the first in example 2 ...
    ```
    """
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f" or x.size == 0:
        return
    finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if finite.all():
        return
    count = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    raise ValueError(
        f"`{name}` holds {count} non-finite values (NaN or Inf), the first in "
        f"example {int(np.argmin(finite))}; {int((~finite).sum())} examples are "
        "affected. The loss would be NaN. Replace those values (e.g. "
        "`np.nan_to_num`) or drop the examples before `fit`."
    )


def first_batch_inputs(x, batch_size):
    """The inputs of the first batch `fit` will see, or None if not cheap to get.

    A `keras_edu.CurriculumDataset` is left alone (reading its batch would
    move a `tf.data` source's streams); an unbatched `tf.data.Dataset`
    gives its first example, without a batch axis.
    """
    from keras_edu.curriculum import CurriculumDataset

    if isinstance(x, CurriculumDataset):
        return None
    if isinstance(x, np.ndarray):
        return x[: batch_size or 32]
    if isinstance(x, keras.utils.PyDataset):
        batch = x[0]
        return batch[0] if isinstance(batch, tuple) else batch
    try:
        import tensorflow as tf
    except ImportError:  # pragma: no cover - TensorFlow is a dependency
        return None
    if isinstance(x, tf.data.Dataset):
        element = next(iter(x.take(1)))
        inputs = element[0] if isinstance(element, tuple) else element
        if not isinstance(inputs, tf.Tensor):
            return None
        # One example when the dataset is unbatched: the caller, who knows
        # the model's input rank, adds the batch axis.
        return inputs.numpy()
    return None


def check_teachers_finite(teachers, x):
    """Runs each teacher on `x` and raises a ValueError naming one with NaN/Inf logits.

    Args:
        teachers: The `keras_edu.Teacher`s, in the Distiller's order.
        x: One batch of inputs (finite).
    """
    for index, teacher in enumerate(teachers):
        logits = ops.convert_to_numpy(teacher(x))
        if not np.isfinite(logits).all():
            raise ValueError(
                f"Teacher {index} (classes {list(teacher.classes)}) returns "
                "non-finite logits on the first batch of finite inputs, so "
                "every loss it teaches would be NaN. Check that teacher's "
                "weights (a model trained into NaN, a bad checkpoint) and its "
                "preprocessing before distilling from it."
            )


class TerminateOnNaN(keras.callbacks.TerminateOnNaN):
    """Stops training at a non-finite loss and names the terms that went non-finite.

    Like `keras.callbacks.TerminateOnNaN`, and the error it logs says
    which of the logged loss terms (`student_loss`, `distillation_loss`,
    AMTML's `kd_loss`, `hint_loss`, ...) are non-finite, so the cause can
    be found: a non-finite `student_loss` alone points at the inputs or the
    student, a non-finite `distillation_loss` at a teacher. The terms are
    the epoch's running means, so a term that went non-finite at any step
    shows. Pass `raise_error=True` to raise a RuntimeError (with the same
    message) instead of stopping.

    Example:

    ```python
    import keras_edu

    callbacks = [keras_edu.nonfinite.TerminateOnNaN()]
    ```
    """

    def __init__(self, raise_error=False):
        super().__init__(raise_error=raise_error)
        self.nonfinite_terms = []

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or np.isfinite(float(ops.convert_to_numpy(loss))):
            return
        self.nonfinite_terms = sorted(
            key
            for key, value in logs.items()
            if key != "loss" and _is_scalar(value) and not np.isfinite(float(value))
        )
        terms = ", ".join(self.nonfinite_terms) or "no logged term (only the total)"
        message = (
            f"Batch {batch}: the loss is {float(loss)}; non-finite terms: {terms}. "
            "A non-finite student_loss points at the inputs or the student, a "
            "non-finite distillation term at a teacher or the temperature."
        )
        if self.raise_error:
            raise RuntimeError(message)
        logger.error("%s Terminating training.", message)
        self.model.stop_training = True


def _is_scalar(value):
    try:
        return np.ndim(ops.convert_to_numpy(value)) == 0
    except (TypeError, ValueError):
        return False
