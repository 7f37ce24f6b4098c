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


class GroupBranch:
    """How one curriculum group is distilled at a given grade.

    Attributes:
        student_columns: Positions of the group's classes in the grade's
            student logits.
        members: `(teacher_index, teacher_columns)` pairs: the teachers that
            cover the group and the positions of the group's classes in each
            teacher's logits.
    """

    def __init__(self, student_columns, members):
        self.student_columns = np.asarray(student_columns, dtype="int32")
        self.members = members


class GradeRouting:
    """Routing at one grade of education distillation.

    Batches are homogeneous in group, so a step distils with the teachers of
    the batch's group only: one `GroupBranch` per group seen at this grade.

    Args:
        partition: The `keras_edu.ClassPartition` of the curriculum.
        grade: The grade (1-based).
        teacher_classes: One tuple of global class ids per teacher.
        seen_teachers: Indices of teachers that teach every seen class on
            every example (`seen_branch`) instead of a group's classes.
        retired_teachers: Indices of teachers that do not teach at this
            grade.
    """

    def __init__(
        self, partition, grade, teacher_classes, seen_teachers=(), retired_teachers=()
    ):
        self.grade = grade
        self.seen_classes = partition.classes_up_to(grade)
        # label_to_column[c] is class c's logit at this grade, -1 if unseen.
        self.label_to_column = np.full((partition.num_classes,), -1, "int32")
        self.label_to_column[self.seen_classes] = np.arange(
            len(self.seen_classes), dtype="int32"
        )
        self.group_table = partition.group_of(np.arange(partition.num_classes)).astype(
            "int32"
        )
        self.branches = []
        for group in partition.groups[:grade]:
            members = _members_covering(
                group, teacher_classes, skip=set(seen_teachers) | set(retired_teachers)
            )
            self.branches.append(
                GroupBranch(self.label_to_column[group], members)
            )
        # Generalists over every seen class, in this grade's logit order.
        self.seen_branch = None
        if seen_teachers:
            members = _members_covering(
                self.seen_classes,
                [teacher_classes[k] for k in seen_teachers],
            )
            members = [(seen_teachers[i], columns) for i, columns in members]
            self.seen_branch = GroupBranch(
                np.arange(len(self.seen_classes), dtype="int32"), members
            )
        self.group_has_teacher = np.asarray(
            [1.0 if b.members else 0.0 for b in self.branches], "float32"
        )


def _members_covering(classes, teacher_classes, skip=()):
    """`(teacher index, positions of classes in its logits)` of the teachers
    that cover all of `classes`."""
    members = []
    for k, covered in enumerate(teacher_classes):
        position = {c: i for i, c in enumerate(covered)}
        if k not in skip and all(c in position for c in classes):
            members.append((k, np.asarray([position[c] for c in classes], "int32")))
    return members


def check_curriculum_teachers(partition, teacher_classes):
    """Every teacher is a specialist of one group or a generalist of all."""
    groups = {frozenset(g): i for i, g in enumerate(partition.groups)}
    everything = frozenset(range(partition.num_classes))
    for k, classes in enumerate(teacher_classes):
        class_set = frozenset(classes)
        if class_set in groups or class_set == everything:
            continue
        raise ValueError(
            f"`teachers[{k}]` covers classes {sorted(class_set)[:12]}"
            f"{'...' if len(class_set) > 12 else ''}, which is neither one "
            "group of the student's partition nor all classes. A specialist "
            "must cover exactly its group's classes; the groups are "
            f"{[g if len(g) <= 12 else g[:12] + ['...'] for g in partition.groups]}."
        )
