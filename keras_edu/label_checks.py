"""Checks of the labels given to `fit`, in NumPy, before any compute is spent.

Out-of-range labels fail deep in a graph trace on TensorFlow, as an
IndexError on PyTorch, and train silently on JAX (its gather clamps the
index); float labels train silently everywhere. One vectorised pass over
the labels, negligible next to an epoch, gives every backend the same
clear error.
"""

import numpy as np

__all__ = ["check_labels"]


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
