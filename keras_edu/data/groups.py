"""`split_by_groups`: per-group data for training specialist teachers."""

import numpy as np

from keras_edu.data._tf import tf
from keras_edu.data.image_source import ImageSource


def split_by_groups(source_or_arrays, groups, local_labels=True):
    """Splits data into one subset per group of classes.

    Group `k` keeps only the examples whose label is in `groups[k]`. With
    `local_labels=True` their labels become positions within the group,
    `label -> groups[k].index(label)`, which is what a specialist teacher
    with `len(groups[k])` logits is trained on (and what
    `keras_edu.Teacher(model, classes=groups[k])` maps back to global
    ids). Groups may overlap (e.g. growing groups).

    Args:
        source_or_arrays: An `ImageSource`, an unbatched `tf.data.Dataset`
            of `(image, label)`, or a tuple `(x, y)` of NumPy arrays.
        groups: List of lists of global class ids, e.g. `[[0, 1], [2, 3, 4]]`.
        local_labels: Whether to relabel to positions within each group
            (`True`) or keep the global labels (`False`).

    Returns:
        A list with one entry per group, of the input's kind: `ImageSource`s
        (with the group's `num_classes`, `class_names` and, when the input
        knew its labels, `size` and `labels`), `tf.data.Dataset`s, or
        `(x, y)` NumPy tuples.

    Example:

    ```python
    import numpy as np
    from keras_edu.data import split_by_groups

    x = np.arange(6).reshape(6, 1, 1)
    y = np.array([0, 1, 2, 3, 2, 0])
    (x0, y0), (x1, y1) = split_by_groups((x, y), groups=[[0, 1], [3, 2]])
    y0  # [0, 1, 0]   (global 0, 1, 0)
    y1  # [1, 0, 1]   (global 2, 3, 2: 3 is position 0 of group [3, 2])
    ```
    """
    groups = _check_groups(groups)
    if isinstance(source_or_arrays, ImageSource):
        return [
            _split_source(source_or_arrays, g, local_labels) for g in groups
        ]
    if isinstance(source_or_arrays, tf.data.Dataset):
        return [
            _filter_dataset(source_or_arrays, g, local_labels) for g in groups
        ]
    if (
        isinstance(source_or_arrays, (tuple, list))
        and len(source_or_arrays) == 2
    ):
        return [
            _split_arrays(*source_or_arrays, g, local_labels) for g in groups
        ]
    raise ValueError(
        "`source_or_arrays` must be an ImageSource, a tf.data.Dataset of "
        "(image, label) or a tuple (x, y) of arrays. Received: "
        f"{type(source_or_arrays).__name__}."
    )


def _check_groups(groups):
    message = (
        "`groups` must be a non-empty list of non-empty lists of distinct "
        "class ids >= 0, e.g. [[0, 1], [2, 3]]. Received: groups={!r}."
    )
    if not isinstance(groups, (list, tuple)) or not groups:
        raise ValueError(message.format(groups))
    checked = []
    for group in groups:
        if not isinstance(group, (list, tuple, np.ndarray)) or len(group) == 0:
            raise ValueError(message.format(groups))
        ids = []
        for c in group:
            if (
                isinstance(c, (bool, np.bool_))
                or not isinstance(c, (int, np.integer))
                or c < 0
            ):
                raise ValueError(message.format(groups))
            ids.append(int(c))
        if len(set(ids)) != len(ids):
            raise ValueError(
                f"Group {ids} lists a class twice; each class appears at "
                "most once per group."
            )
        checked.append(ids)
    return checked


def _lookup(group):
    """`table[global_id]` = position in `group`, -1 for other classes."""
    table = np.full(max(group) + 1, -1, np.int32)
    table[group] = np.arange(len(group), dtype=np.int32)
    return table


def _split_arrays(x, y, group, local_labels):
    x, y = np.asarray(x), np.asarray(y)
    flat = y[:, 0] if y.ndim == 2 and y.shape[1] == 1 else y
    if flat.ndim != 1 or len(flat) != len(x):
        raise ValueError(
            f"`y` must be integer labels of shape ({len(x)},). "
            f"Received: y.shape={y.shape}."
        )
    keep = np.isin(flat, group)
    if not keep.any():
        raise ValueError(f"No example has a label in group {group}.")
    labels = flat[keep]
    if local_labels:
        labels = _lookup(group)[labels].astype(flat.dtype)
    return x[keep], labels


def _filter_dataset(dataset, group, local_labels):
    table = tf.constant(_lookup(group))
    size = len(_lookup(group))

    def position(label):
        label = tf.cast(label, tf.int32)
        inside = tf.logical_and(label >= 0, label < size)
        return tf.where(
            inside, tf.gather(table, tf.clip_by_value(label, 0, size - 1)), -1
        )

    dataset = dataset.filter(lambda image, label: position(label) >= 0)
    if local_labels:
        dataset = dataset.map(
            lambda image, label: (image, tf.cast(position(label), label.dtype)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return dataset


def _split_source(source, group, local_labels):
    too_big = [c for c in group if c >= source.num_classes]
    if too_big:
        raise ValueError(
            f"Group {group} has class ids {too_big} but the source has "
            f"{source.num_classes} classes (ids 0..{source.num_classes - 1})."
        )
    labels = size = None
    if source.labels is not None:
        labels = source.labels[np.isin(source.labels, group)]
        if not len(labels):
            raise ValueError(f"No example has a label in group {group}.")
        if local_labels:
            labels = _lookup(group)[labels]
        size = len(labels)
    if local_labels:
        num_classes = len(group)
        class_names = tuple(source.class_names[c] for c in group)
    else:
        num_classes, class_names = source.num_classes, source.class_names
    dataset = _filter_dataset(source.dataset, group, local_labels)
    if size is not None:
        # `filter` makes the length unknown; restoring it lets Keras show
        # progress and size epochs from the first one.
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(size))
    return ImageSource(
        dataset=dataset,
        num_classes=num_classes,
        class_names=class_names,
        image_shape=source.image_shape,
        size=size,
        labels=labels,
    )
