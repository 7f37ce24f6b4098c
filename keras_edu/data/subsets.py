"""`balanced_subset`: a seeded, class-balanced draw of a data set's examples."""

import numpy as np


def balanced_subset(labels, size, seed=0, num_classes=None):
    """Indices of a seeded subset of `size` examples, balanced by class.

    The rule, for `k = num_classes` classes: every class gets
    `size // k` examples and the first `size % k` classes, in label order,
    one more. A class with fewer examples than that gives all it has, and
    what it lacks is spread over the other classes by the same rule.
    Exactly: each class gets `min(count, level)` examples, for the largest
    `level` whose total fits in `size`, and the examples still missing go
    one each to the first classes, in label order, that have more than
    `level`. So sizes `[10, 10, 10]` give `[3, 2, 2]` for `size=7`, and
    sizes `[1, 10, 10]` give `[1, 5, 4]` for `size=10`.

    Within each class, the examples are drawn uniformly without replacement
    by `numpy.random.default_rng(seed)`: the same labels, `size` and `seed`
    always give the same subset, whatever the order of the calls.

    Args:
        labels: Integer class ids `>= 0`, shape `(N,)`, in the data's order.
        size: Number of examples to keep, `0 <= size <= N`.
        seed: Seed of the draw within each class.
        num_classes: Number of classes; defaults to `max(labels) + 1`.
            Classes without examples get none.

    Returns:
        The kept positions in `labels`, sorted (int64, shape `(size,)`), so
        that the subset keeps the data's order.

    Example:

    ```python
    import numpy as np
    from keras_edu.data import balanced_subset

    labels = np.repeat([0, 1, 2], 10)  # Sorted by class, as folders list.
    keep = balanced_subset(labels, 7, seed=0)
    np.bincount(labels[keep])  # [3, 2, 2]
    keep_again = balanced_subset(labels, 7, seed=0)  # The same indices.
    ```
    """
    labels = _check_labels(labels)
    num_classes = _check_num_classes(num_classes, labels)
    if (
        isinstance(size, bool)
        or not isinstance(size, (int, np.integer))
        or not 0 <= size <= len(labels)
    ):
        raise ValueError(
            f"`size` must be an int in [0, {len(labels)}] (the number of "
            f"labels). Received: size={size!r}."
        )
    class_sizes = np.bincount(labels, minlength=num_classes)
    counts = _balanced_counts(class_sizes, int(size))
    rng = np.random.default_rng(seed)
    kept = [
        rng.permutation(np.flatnonzero(labels == label))[:count]
        for label, count in enumerate(counts)
    ]
    return np.sort(np.concatenate(kept).astype(np.int64))


def _balanced_counts(class_sizes, size):
    """Examples per class under the rule of `balanced_subset`."""
    # sum(min(class_sizes, level)) grows with `level`: bisect for the
    # largest level that fits.
    low, high = 0, int(class_sizes.max(initial=0))
    while low < high:
        middle = (low + high + 1) // 2
        if np.minimum(class_sizes, middle).sum() <= size:
            low = middle
        else:
            high = middle - 1
    counts = np.minimum(class_sizes, low)
    # Fewer are missing than classes above `level` (level + 1 did not fit).
    missing = size - int(counts.sum())
    counts[np.flatnonzero(class_sizes > low)[:missing]] += 1
    return counts


def _check_labels(labels):
    labels = np.asarray(labels)
    if labels.ndim != 1 or (
        labels.size and not np.issubdtype(labels.dtype, np.integer)
    ):
        raise ValueError(
            "`labels` must be a 1-D array of integer class ids. Received: "
            f"shape {labels.shape}, dtype {labels.dtype}. (One-hot labels? "
            "Pass `labels.argmax(-1)`.)"
        )
    if labels.size and labels.min() < 0:
        raise ValueError(
            f"`labels` must hold class ids >= 0. Received a label "
            f"{labels.min()}."
        )
    return labels.astype(np.int64)


def _check_num_classes(num_classes, labels):
    largest = int(labels.max()) + 1 if labels.size else 0
    if num_classes is None:
        return largest
    if num_classes < largest:
        raise ValueError(
            f"Labels go up to {largest - 1} but num_classes={num_classes}. "
            "Pass a `num_classes` covering every label."
        )
    return int(num_classes)
