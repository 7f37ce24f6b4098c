"""Which teacher distils which example: routing tables built once, in NumPy."""

import numpy as np


class TeacherGroup:
    """Teachers that cover exactly the same set of classes.

    Attributes:
        columns: The group's classes in ascending order; the student logits
            of the group are `student_logits[:, columns]`.
        members: `(teacher_index, permutation)` pairs. `permutation`
            reorders that teacher's logits into `columns` order, or is `None`
            when the teacher already lists its classes in that order.
        covers_all: True when `columns` is every class `0..num_classes-1`,
            so no column gather is needed.
    """

    def __init__(self, columns, members, num_classes):
        self.columns = np.asarray(columns, dtype="int32")
        self.members = members
        self.covers_all = len(columns) == num_classes


class TeacherRouting:
    """Groups teachers by the classes they cover and maps labels to groups.

    An example is distilled by every group that covers its label. Teachers
    inside a group form an ensemble (their probabilities are mixed by the
    distillation term); when several groups cover one label (a generalist
    beside a specialist, say) the example's distillation loss is the mean of
    the groups' losses. Examples no group covers get no distillation loss.

    Args:
        teacher_classes: One tuple of global class ids per teacher.
        num_classes: The width of the student's logits.
    """

    def __init__(self, teacher_classes, num_classes):
        by_classes = {}
        for index, classes in enumerate(teacher_classes):
            by_classes.setdefault(frozenset(classes), []).append(index)
        self.groups = []
        for class_set, indices in by_classes.items():
            columns = sorted(class_set)
            members = [
                (k, _permutation_to_sorted(teacher_classes[k]))
                for k in indices
            ]
            self.groups.append(TeacherGroup(columns, members, num_classes))
        # cover_table[c, g] = 1 when group g covers class c.
        self.cover_table = np.zeros((num_classes, len(self.groups)), "float32")
        for g, group in enumerate(self.groups):
            self.cover_table[group.columns, g] = 1.0
        self.every_group_covers_all = all(g.covers_all for g in self.groups)


def _permutation_to_sorted(classes):
    order = np.argsort(np.asarray(classes))
    if np.array_equal(order, np.arange(len(classes))):
        return None
    return order.astype("int32")
