"""Checks of the labels (and arrays) given to `fit`, before any compute is spent.

Out-of-range labels fail deep in a graph trace on TensorFlow, as an
IndexError on PyTorch, and train silently on JAX (its gather clamps the
index); float labels train silently everywhere. One vectorised pass over
the labels, negligible next to an epoch, gives every backend the same
clear error.

Labels that arrive batch by batch (a `tf.data.Dataset`, a `PyDataset`, a
generator) are counted inside the compiled step instead, by
`BadLabelCount`, and `Distiller.fit` raises at the end of the first epoch
that saw one.

`check_input_array` does the same for a NumPy `x`: its dtype, its
example shape against the student's input, and its length against `y`'s,
so a wrong array gets one message naming `x` instead of a different
backend error on each backend.
"""

import keras
import numpy as np
from keras import ops

__all__ = ["BadLabelCount", "check_input_array", "check_labels"]


def check_input_array(x, input_shape, y=None, name="x"):
    """Raises a ValueError naming `name` unless `x` fits a model's input.

    Anything but a NumPy array (a dataset, a dict of inputs) is left alone.

    Args:
        x: The inputs given to `fit`.
        input_shape: The model's input shape without the batch axis
            (`None` entries match any size), or `None` to skip the shape.
        y: The labels given with `x`, if any, to compare lengths.
        name: The argument's name in the messages.

    Example:

    ```python
    import numpy as np
    from keras_edu.label_checks import check_input_array

    try:
        check_input_array(np.zeros((8, 5), "float32"), (4,))
    except ValueError as error:
        print(error)  # `x` holds examples of shape (5,), but the model takes (4,) ...
    ```
    """
    if not isinstance(x, np.ndarray):
        return
    if x.dtype.kind not in "biuf":
        raise ValueError(
            f"`{name}` must hold numbers (a float or integer array); received "
            f"dtype {x.dtype}. Decode or encode the inputs (e.g. images as "
            "float32) before `fit`."
        )
    if input_shape is not None and not _shape_fits(x.shape[1:], input_shape):
        raise ValueError(
            f"`{name}` holds examples of shape {tuple(x.shape[1:])} (array "
            f"shape {tuple(x.shape)}), but the model takes "
            f"{_shape_text(input_shape)}. Reshape `{name}` (e.g. add the "
            "channel axis with `x[..., None]`) or build the model for this shape."
        )
    if y is not None and np.ndim(y) > 0 and len(y) != len(x):
        raise ValueError(
            f"`{name}` has {len(x)} examples but `y` has {len(y)} labels; "
            "give one label per example."
        )


def _shape_fits(shape, expected):
    return len(shape) == len(expected) and all(
        e is None or s == e for s, e in zip(shape, expected)
    )


def _shape_text(shape):
    return "(" + ", ".join("any" if s is None else str(s) for s in shape) + (
        ",)" if len(shape) == 1 else ")"
    )


def check_labels(y, num_classes, name="y"):
    """Raises a ValueError naming `name` unless `y` are valid labels.

    Accepted: integer class ids (or integer-valued floats) in
    `[0, num_classes)` of shape `(N,)` or `(N, 1)`; or one-hot / soft
    labels of shape `(N, num_classes)` whose rows are non-negative and sum
    to 1 (MixUp and label smoothing give such rows).

    Args:
        y: The labels, a NumPy array or anything `np.asarray` takes.
        num_classes: The width of the student's logits.
        name: The argument's name in the messages.

    Example:

    ```python
    import numpy as np
    from keras_edu.label_checks import check_labels

    check_labels(np.array([0, 2, 1]), num_classes=3)  # fine
    try:
        check_labels(np.array([0, 12]), num_classes=6)
    except ValueError as error:
        print(error)  # `y` holds label 12, but the student has 6 outputs ...
    ```
    """
    labels = np.asarray(y)
    if labels.dtype.kind not in "iuf":
        raise ValueError(
            f"`{name}` must hold numeric class ids or one-hot rows. Received "
            f"dtype {labels.dtype}. Map the labels to integers in "
            f"[0, {num_classes}) first."
        )
    if labels.size == 0:
        raise ValueError(f"`{name}` is empty: give at least one labelled example.")
    if labels.ndim == 2 and labels.shape[1] == num_classes and num_classes > 1:
        _check_distributions(labels, name)
    elif labels.ndim == 1 or (labels.ndim == 2 and labels.shape[1] == 1):
        _check_class_ids(labels.reshape(-1), num_classes, name)
    else:
        raise ValueError(
            f"`{name}` has shape {labels.shape}; expected (N,) or (N, 1) class "
            f"ids, or (N, {num_classes}) one-hot rows for a student with "
            f"{num_classes} outputs."
        )


def _check_class_ids(labels, num_classes, name):
    if labels.dtype.kind == "f":
        bad = ~np.isfinite(labels) | (labels != np.round(labels))
        if bad.any():
            raise ValueError(
                f"`{name}` holds {int(bad.sum())} labels that are not class ids, "
                f"the first {labels[bad][0].item()!r}. Sparse labels must be integers "
                f"in [0, {num_classes}); for soft labels pass rows of shape "
                f"(N, {num_classes})."
            )
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise ValueError(
            f"`{name}` holds {int(bad.sum())} labels outside [0, {num_classes}), "
            f"the first {labels[bad][0].item()!r}, but the student has {num_classes} "
            f"outputs. Pass labels in [0, {num_classes}), or a student (and "
            "teachers) with more outputs."
        )


def _check_distributions(rows, name):
    finite = np.isfinite(rows).all(axis=1)
    sums = np.where(finite, rows.sum(axis=1), np.nan)
    bad = ~finite | (rows < 0).any(axis=1) | ~np.isclose(sums, 1.0, atol=1e-3)
    if bad.any():
        first = int(np.argmax(bad))
        raise ValueError(
            f"`{name}` holds {int(bad.sum())} one-hot rows that are not "
            f"distributions (non-negative, summing to 1), the first at row "
            f"{first}: {rows[first].tolist()}."
        )


class BadLabelCount(keras.metrics.Metric):
    """Counts the invalid labels of the batches it sees, inside the step.

    A sparse label is invalid when it is not an integer in
    `[0, num_classes)` (or not finite); a `(B, num_classes)` row when it has
    a negative or non-finite entry or does not sum to 1. The count and the
    first invalid value (a sparse label, or the row's sum) accumulate
    across epochs, in `keras.ops` only, with no Python control flow in the
    compiled step: `Keras`'s per-epoch `reset_metrics` leaves them alone
    (`restart()` zeroes them), so the count is still there when the epoch's
    callbacks run, after validation. `Distiller.fit` raises from it when
    the labels come batch by batch; NumPy labels are checked up front by
    `check_labels`.

    Args:
        num_classes: The width of the student's logits.
        name: The metric's name. Defaults to `"bad_labels"`.

    Example:

    ```python
    import numpy as np
    from keras_edu.label_checks import BadLabelCount

    count = BadLabelCount(num_classes=6)
    count.update_state(np.array([0, 12, 3, -1]))
    float(count.result()), float(count.first_bad)  # (2.0, 12.0)
    ```
    """

    def __init__(self, num_classes, name="bad_labels", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")
        self.first_bad = self.add_variable(shape=(), initializer="zeros", name="first_bad")

    def update_state(self, y, sample_weight=None):
        y = ops.cast(y, "float32")
        if len(y.shape) == 2 and y.shape[-1] == self.num_classes and self.num_classes > 1:
            values = ops.sum(y, axis=-1)
            bad = _any_of(
                ops.any(ops.logical_not(ops.isfinite(y)), axis=-1),
                ops.any(ops.less(y, 0.0), axis=-1),
                ops.greater(ops.abs(values - 1.0), 1e-3),
            )
        else:
            values = ops.reshape(y, (-1,))
            bad = _any_of(
                ops.logical_not(ops.isfinite(values)),
                ops.less(values, 0.0),
                ops.greater_equal(values, float(self.num_classes)),
                ops.not_equal(values, ops.round(values)),
            )
        bad = ops.cast(bad, "float32")
        found = ops.sum(bad)
        first_in_batch = ops.take(values, ops.argmax(bad))
        count = ops.convert_to_tensor(self.count)
        keep = ops.logical_or(ops.greater(count, 0.0), ops.equal(found, 0.0))
        self.first_bad.assign(
            ops.where(keep, ops.convert_to_tensor(self.first_bad), first_in_batch)
        )
        self.count.assign(count + found)

    def result(self):
        return self.count

    def reset_state(self):
        # Left alone by Keras's per-epoch reset, see the class docstring.
        pass

    def restart(self):
        """Zeroes the count and the first invalid value."""
        self.count.assign(0.0)
        self.first_bad.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


def _any_of(*conditions):
    result = conditions[0]
    for condition in conditions[1:]:
        result = ops.logical_or(result, condition)
    return result


class StopOnBadLabels(keras.callbacks.Callback):
    """Raises at the end of the first epoch whose batches held a bad label.

    `Distiller.fit` adds it for a plain student; it reads the Distiller's
    `BadLabelCount`.
    """

    def __init__(self, counter):
        super().__init__()
        self.counter = counter

    def on_train_begin(self, logs=None):
        self.counter.restart()

    def on_epoch_end(self, epoch, logs=None):
        raise_if_bad_labels(self.counter, epoch)


def raise_if_bad_labels(counter, epoch, source="y"):
    """Raises the ValueError for the labels `counter` found, if any."""
    count = int(ops.convert_to_numpy(counter.count))
    if count == 0:
        return
    first = float(ops.convert_to_numpy(counter.first_bad))
    first = int(first) if first.is_integer() else first
    raise ValueError(
        f"`{source}`: {count} labels seen by epoch {epoch + 1} are not valid for "
        f"a student with {counter.num_classes} outputs, the first {first!r} "
        f"(sparse labels must be integers in [0, {counter.num_classes}); "
        f"(B, {counter.num_classes}) rows must be distributions, for which the "
        "value shown is the row's sum). Map the dataset's labels into that "
        "range, or give a student (and teachers) with more outputs."
    )
