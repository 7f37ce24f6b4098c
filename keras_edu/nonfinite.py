"""Non-finite values: where a NaN comes from, said before or when it appears.

A NaN pixel makes the loss NaN on TensorFlow and PyTorch and training goes
on; a teacher trained into NaN does the same. `Distiller.fit` checks
NumPy inputs for non-finite values and runs every teacher on the first
batch before training, so both fail at once with a ValueError that names
`x` or the teacher. During training, `TerminateOnNaN` stops at the first
non-finite loss and names the logged terms that went non-finite and, given
the training inputs, the teacher that produced them
(`find_nonfinite_teachers`).
"""

import logging

import keras
import numpy as np
from keras import ops

__all__ = [
    "TerminateOnNaN",
    "check_finite_inputs",
    "check_teachers_finite",
    "find_nonfinite_teachers",
]

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


def check_before_training(x, batch_size, input_shape, teachers):
    """Raises before the first step when `x` or a teacher is not finite.

    A NaN pixel or a teacher trained into NaN would make every loss NaN
    while training goes on: say which, before the first step.

    Args:
        x: What `fit` was given as `x`.
        batch_size: `fit`'s batch size.
        input_shape: The student's input shape without the batch axis.
        teachers: The `keras_edu.Teacher`s, in the Distiller's order.
    """
    check_finite_inputs(x)
    inputs = first_batch_inputs(x, batch_size)
    if inputs is None:
        return
    inputs = np.asarray(inputs)
    if input_shape is not None and inputs.ndim == len(input_shape):
        inputs = inputs[None]  # one example of an unbatched dataset
    check_finite_inputs(inputs, name="x (its first batch)")
    check_teachers_finite(teachers, inputs)


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


def find_nonfinite_teachers(teachers, x, batch_size=256):
    """Runs every teacher over `x`; returns where each first gives NaN/Inf logits.

    A frozen teacher whose logits were finite on the first batch can still
    overflow on some later input. This scan finds which teacher and on
    which example; `TerminateOnNaN(data=x)` runs it when a teacher's term
    goes non-finite.

    Args:
        teachers: `keras_edu.Teacher`s (or models), in the Distiller's order.
        x: The inputs: a NumPy array, or an iterable of batches (a batched
            `tf.data.Dataset` of inputs or of `(inputs, labels)` pairs).
        batch_size: Examples per teacher pass when `x` is an array.

    Returns:
        A dict `{teacher index: index of the first example}` holding the
        teachers with non-finite logits only; empty when all are finite.

    Example:

    ```python
    import keras, numpy as np
    from keras_edu.nonfinite import find_nonfinite_teachers

    teacher = keras.Sequential(
        [keras.Input((2,)), keras.layers.Lambda(lambda t: keras.ops.sqrt(t))]
    )
    x = np.ones((6, 2), "float32"); x[4] = -1.0
    find_nonfinite_teachers([teacher], x, batch_size=4)  # {0: 4}
    ```
    """
    if isinstance(x, np.ndarray):
        batches = (x[i : i + batch_size] for i in range(0, len(x), batch_size))
    else:
        batches = (b[0] if isinstance(b, (tuple, list)) else b for b in x)
    found, seen = {}, 0
    for batch in batches:
        for index, teacher in enumerate(teachers):
            if index in found:
                continue
            logits = ops.convert_to_numpy(teacher(batch))
            rows = np.isfinite(logits.reshape(len(logits), -1)).all(axis=1)
            if not rows.all():
                found[index] = seen + int(np.argmin(rows))
        seen += len(ops.convert_to_numpy(keras.tree.flatten(batch)[0]))
        if len(found) == len(teachers):
            break
    return found


class TerminateOnNaN(keras.callbacks.TerminateOnNaN):
    """Stops training at a non-finite loss and names the terms that went non-finite.

    Like `keras.callbacks.TerminateOnNaN`, and the error it logs says
    which of the logged loss terms (`student_loss`, `distillation_loss`,
    AMTML's `kd_loss`, `hint_loss`, ...) are non-finite, so the cause can
    be found: a non-finite `student_loss` alone points at the inputs or the
    student, a non-finite `distillation_loss` at a teacher. The terms are
    the epoch's running means, so a term that went non-finite at any step
    shows.

    When a teacher's term is non-finite and the student's is not, the
    message names the teacher: given the training inputs (`data`), the
    callback runs every teacher over them (`find_nonfinite_teachers`) and
    says which one gives non-finite logits and on which example.

    Args:
        raise_error: Raise a RuntimeError (with the same message) instead
            of stopping.
        data: The training inputs (a NumPy array or batched dataset), to
            find the teacher at fault. `None` (default): name the terms
            only.

    Example:

    ```python
    import keras_edu

    callbacks = [keras_edu.nonfinite.TerminateOnNaN()]
    ```
    """

    def __init__(self, raise_error=False, data=None):
        super().__init__(raise_error=raise_error)
        self.data = data
        self.nonfinite_terms = []
        self.nonfinite_teachers = {}
        # The message of the stop, or None while every loss was finite.
        self.message = None

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
        ) + self._teacher_at_fault()
        self.message = message
        if self.raise_error:
            raise RuntimeError(message)
        logger.error("%s Terminating training.", message)
        self.model.stop_training = True

    def _teacher_at_fault(self):
        teachers = getattr(self.model, "teachers", None)
        if (
            not teachers
            or "student_loss" in self.nonfinite_terms
            or not self.nonfinite_terms
        ):
            return ""
        if self.data is None:
            return (
                " Pass the training inputs as `TerminateOnNaN(data=x)` to "
                "find which teacher."
            )
        self.nonfinite_teachers = find_nonfinite_teachers(teachers, self.data)
        if not self.nonfinite_teachers:
            return " Every teacher's logits are finite on `data`."
        return "".join(
            f" Teacher {k} (classes {_short(teachers[k].classes)}) returns "
            f"non-finite logits, first on example {row} of `data`."
            for k, row in sorted(self.nonfinite_teachers.items())
        )


def _short(classes, limit=12):
    classes = list(classes)
    return str(classes) if len(classes) <= limit else f"{classes[:limit]}..."


def _is_scalar(value):
    try:
        return np.ndim(ops.convert_to_numpy(value)) == 0
    except (TypeError, ValueError):
        return False
