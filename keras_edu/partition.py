"""`ClassPartition`: the label space split into the groups of a curriculum."""

import numpy as np
from keras import ops


class ClassPartition:
    """Splits the classes into K groups, one per grade of the curriculum.

    Grade `g` (1-based) of education distillation trains on the classes of
    groups `1..g`. Build a partition with one of the constructors:

    - `ClassPartition.contiguous(num_classes, ratios="1:1:1")`: contiguous
      label ranges sized by the ratios; the remainder goes to the last group
      (`1:1:1` on 100 classes gives `[0, 33)`, `[33, 66)`, `[66, 100)`).
    - `ClassPartition.shuffled(num_classes, ratios, seed)`: the same sizes
      over a seeded permutation of the labels.
    - `ClassPartition.from_groups([[...], ...])`: explicit groups.

    Args:
        groups: A list of non-empty lists of class ids. Every class
            `0..num_classes-1` must be in exactly one group.

    Example:

    ```python
    import keras_edu

    partition = keras_edu.ClassPartition.contiguous(10, ratios="1:1:2")
    partition.groups  # [[0, 1], [2, 3], [4, 5, 6, 7, 8, 9]]
    partition.group_of([0, 3, 9])  # array([0, 1, 2])
    partition.classes_up_to(2)  # [0, 1, 2, 3]
    ```
    """

    def __init__(self, groups):
        self._groups = _validate_groups(groups)
        self.num_classes = sum(len(g) for g in self._groups)
        self._group_table = np.zeros((self.num_classes,), "int32")
        for index, group in enumerate(self._groups):
            self._group_table[group] = index

    @classmethod
    def contiguous(cls, num_classes, ratios="1:1:1"):
        """Contiguous label ranges sized by `ratios` (a string or a tuple)."""
        sizes = _group_sizes(num_classes, ratios)
        bounds = np.cumsum([0] + sizes)
        return cls([list(range(a, b)) for a, b in zip(bounds[:-1], bounds[1:])])

    @classmethod
    def shuffled(cls, num_classes, ratios="1:1:1", seed=0):
        """Like `contiguous`, over a permutation of the labels drawn with `seed`."""
        sizes = _group_sizes(num_classes, ratios)
        labels = np.random.default_rng(seed).permutation(num_classes)
        bounds = np.cumsum([0] + sizes)
        return cls(
            [sorted(labels[a:b].tolist()) for a, b in zip(bounds[:-1], bounds[1:])]
        )

    @classmethod
    def from_groups(cls, groups):
        """A partition with explicit groups of class ids."""
        return cls(groups)

    @property
    def groups(self):
        """The groups, as a list of lists of class ids."""
        return [list(g) for g in self._groups]

    @property
    def num_groups(self):
        """The number of groups, which is the number of grades."""
        return len(self._groups)

    def group_of(self, labels):
        """The 0-based group index of each label.

        Vectorised: NumPy arrays and lists give a NumPy array, backend
        tensors give a backend tensor.
        """
        if isinstance(labels, (list, tuple, np.ndarray, int, np.integer)):
            return self._group_table[np.asarray(labels, dtype="int64")]
        labels = ops.cast(labels, "int32")
        return ops.take(ops.convert_to_tensor(self._group_table), labels, axis=0)

    def classes_up_to(self, grade):
        """The class ids of groups `1..grade`, in ascending order.

        This is also the order of the student's logits at that grade.
        """
        self._check_grade(grade)
        return sorted(c for group in self._groups[:grade] for c in group)

    def _check_grade(self, grade):
        if not isinstance(grade, (int, np.integer)) or not (
            1 <= grade <= self.num_groups
        ):
            raise ValueError(
                f"`grade` must be an integer from 1 to {self.num_groups} "
                f"(grades are 1-based). Received: grade={grade!r}."
            )

    def get_config(self):
        return {"groups": self.groups}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return isinstance(other, ClassPartition) and self.groups == other.groups

    def __repr__(self):
        sizes = [len(g) for g in self._groups]
        return f"ClassPartition(num_classes={self.num_classes}, group_sizes={sizes})"


def _parse_ratios(ratios):
    if isinstance(ratios, str):
        parts = ratios.split(":")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = None
    else:
        try:
            values = [float(r) for r in ratios]
        except (TypeError, ValueError):
            values = None
    if not values or any(not v > 0 for v in values):
        raise ValueError(
            "`ratios` must be positive numbers, as a string like '1:1:1' or "
            f"a tuple like (1, 1, 1). Received: ratios={ratios!r}."
        )
    return values


def _group_sizes(num_classes, ratios):
    values = _parse_ratios(ratios)
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(
            f"`num_classes` must be a positive integer. Received: "
            f"num_classes={num_classes!r}."
        )
    total = sum(values)
    sizes = [int(num_classes * v / total) for v in values[:-1]]
    sizes.append(num_classes - sum(sizes))
    if min(sizes) < 1:
        raise ValueError(
            f"`ratios`={ratios!r} leave a group empty with {num_classes} "
            f"classes (group sizes {sizes}). Use fewer groups or ratios "
            "closer to each other."
        )
    return sizes


def _validate_groups(groups):
    if not isinstance(groups, (list, tuple)) or not groups:
        raise ValueError(
            "`groups` must be a non-empty list of lists of class ids. "
            f"Received: groups={groups!r}."
        )
    clean = []
    for index, group in enumerate(groups):
        ids = np.asarray(group)
        if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(
                f"`groups[{index}]` must be a non-empty list of integer class "
                f"ids. Received: {group!r}."
            )
        clean.append([int(c) for c in ids])
    flat = np.concatenate([np.asarray(g) for g in clean])
    expected = np.arange(flat.size)
    if not np.array_equal(np.sort(flat), expected):
        values, counts = np.unique(flat, return_counts=True)
        repeated = values[counts > 1].tolist()
        missing = sorted(set(expected.tolist()) - set(flat.tolist()))
        raise ValueError(
            "Every class 0..num_classes-1 must be in exactly one group. "
            f"Repeated: {repeated}; missing: {missing[:20]}. "
            f"Received: groups={groups!r}."
        )
    return clean
