"""Which teacher distils which example, and running them on a batch.

A `RoutingPlan` is built once (per grade, for a graded student) in NumPy: a
list of branches, each `(student columns, [(teacher index, teacher
columns)])`, and a table of which branch teaches which class.
`distil_batch` runs the plan on a batch in the batch's layout and combines
the branches' terms: an example taught by several branches gets the mean of
their terms; an example no branch teaches gets none.
"""

import keras
import numpy as np
from keras import ops


class Branch:
    """Teachers that distil the same student columns.

    Attributes:
        student_columns: Positions of the branch's classes in the student's
            logits, or None for all of them, in order.
        members: `(teacher_index, teacher_columns)` pairs: the branch's
            teachers and the positions of its classes in each teacher's
            logits (None: all of them, in order).
    """

    def __init__(self, student_columns, members):
        self.student_columns = (
            None if student_columns is None else np.asarray(student_columns, "int32")
        )
        self.members = members

    @property
    def teachers(self):
        return [k for k, _ in self.members]


class RoutingPlan:
    """The branches of a student and the classes each one teaches.

    Build it with `RoutingPlan.for_teachers` (a plain student) or
    `RoutingPlan.for_grade` (one grade of a `GradedStudent`).

    Attributes:
        group_branches: With a graded student, one branch per curriculum
            group seen at this grade: an example is taught by its group's
            branch only, so a batch runs each on its group's rows (one group
            per batch through `ops.switch`, or one block per group of a
            stratified batch). Empty for a plain student.
        shared_branches: Branches that teach every example whose class they
            cover: the teacher groups of a plain student (teachers covering
            the same classes), the generalists over every seen class of a
            graded one (`generalists_teach="seen"`).
        cover: `(num_classes, branches)` float32; `cover[c, b]` is 1 when
            branch `b` (group branches first) teaches examples of class `c`.
        label_to_column: `(num_classes,)` int32: each class's position in
            the student's logits, -1 for a class not seen yet.
        group_table: `(num_classes,)` int32: each class's curriculum group,
            or None for a plain student.
        grade: The grade (1-based), or None for a plain student.
    """

    def __init__(self, group_branches, shared_branches, cover, label_to_column,
                 group_table=None, grade=None):
        self.group_branches = group_branches
        self.shared_branches = shared_branches
        self.cover = cover
        self.label_to_column = label_to_column
        self.group_table = group_table
        self.grade = grade
        self.group_has_teacher = cover[:, : len(group_branches)].max(axis=0)

    @classmethod
    def for_teachers(cls, teacher_classes, num_classes):
        """Teachers of a plain student, grouped by the classes they cover."""
        by_classes = {}
        for k, classes in enumerate(teacher_classes):
            by_classes.setdefault(frozenset(classes), []).append(k)
        branches = []
        cover = np.zeros((num_classes, len(by_classes)), "float32")
        for b, (class_set, teachers) in enumerate(by_classes.items()):
            columns = sorted(class_set)
            members = [(k, _positions(teacher_classes[k], columns)) for k in teachers]
            everything = len(columns) == num_classes
            branches.append(Branch(None if everything else columns, members))
            cover[columns, b] = 1.0
        return cls([], branches, cover, np.arange(num_classes, dtype="int32"))

    @classmethod
    def for_grade(cls, partition, grade, teacher_classes, seen_teachers=(),
                  retired_teachers=()):
        """One grade of education distillation.

        Args:
            partition: The `keras_edu.ClassPartition` of the curriculum.
            grade: The grade (1-based).
            teacher_classes: One tuple of global class ids per teacher.
            seen_teachers: Teachers that teach every seen class on every
                example instead of a group's classes.
            retired_teachers: Teachers that do not teach at this grade.
        """
        seen = partition.classes_up_to(grade)
        label_to_column = np.full((partition.num_classes,), -1, "int32")
        label_to_column[seen] = np.arange(len(seen), dtype="int32")
        skip = set(seen_teachers) | set(retired_teachers)
        group_branches = [
            Branch(label_to_column[group], _covering(group, teacher_classes, skip))
            for group in partition.groups[:grade]
        ]
        shared = []
        if seen_teachers:
            others = set(range(len(teacher_classes))) - set(seen_teachers)
            shared.append(Branch(None, _covering(seen, teacher_classes, others)))
        cover = np.zeros((partition.num_classes, grade + len(shared)), "float32")
        for g, branch in enumerate(group_branches):
            if branch.members:
                cover[partition.groups[g], g] = 1.0
        # The seen-class generalists teach every example of the batch.
        cover[:, grade:] = 1.0
        group_table = partition.group_of(np.arange(partition.num_classes))
        return cls(group_branches, shared, cover, label_to_column,
                   group_table.astype("int32"), grade)

    @property
    def branches(self):
        return self.group_branches + self.shared_branches

    def covers_every_class(self, b):
        """Whether branch `b` teaches every example, whatever its class."""
        return bool(self.cover[:, b].all())

    def teacher_flops(self, flops, group_shares=None):
        """Teacher forward FLOPs per training example.

        Args:
            flops: Forward FLOPs of one example, per teacher.
            group_shares: The share of each seen group among the examples
                (graded students).
        """
        total = sum(flops[k] for b in self.shared_branches for k in b.teachers)
        for share, branch in zip(group_shares or [], self.group_branches):
            total += share * sum(flops[k] for k in branch.teachers)
        return total


def _positions(classes, wanted):
    """Positions of `wanted` in `classes`, or None when they are the same list."""
    position = {c: i for i, c in enumerate(classes)}
    columns = np.asarray([position[c] for c in wanted], "int32")
    if np.array_equal(columns, np.arange(len(classes))):
        return None
    return columns


def _covering(classes, teacher_classes, skip=()):
    """`(teacher index, positions of classes in its logits)` of the teachers
    that cover all of `classes`."""
    members = []
    for k, covered in enumerate(teacher_classes):
        position = {c: i for i, c in enumerate(covered)}
        if k not in skip and all(c in position for c in classes):
            members.append((k, np.asarray([position[c] for c in classes], "int32")))
    return members


def samples_each_teacher_teaches(plans, y, num_teachers):
    """Per teacher, the indices of the samples it teaches under any of `plans`.

    None for a teacher that teaches every sample. A specialist teaches its
    group's samples only, so the teacher cache need not run it on the rest:
    their rows stay zero, and a per-example term masks them out anyway.

    Args:
        plans: The `RoutingPlan`s of a run (one per grade of a graded student).
        y: The labels of the samples: sparse class ids or one-hot rows.
        num_teachers: The number of teachers.
    """
    y = np.asarray(y)
    labels = np.argmax(y, axis=-1) if y.ndim == 2 else y.reshape(-1).astype("int64")
    classes = np.zeros((num_teachers, len(plans[0].cover)), bool)
    for plan in plans:
        for b, branch in enumerate(plan.branches):
            for k in branch.teachers:
                classes[k] |= plan.cover[:, b] > 0
    return [
        None if taught.all() else np.flatnonzero(taught[labels]) for taught in classes
    ]


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


# ---------------------------------------------------------------- execution


def distil_batch(plan, run_branch, x, labels, logits, features=None,
                 rows_per_group=None, on_subsets=False):
    """Runs the plan's branches on a batch and combines their terms.

    `run_branch(branch, x, logits, features)` is the distillation term's: it
    returns a dict of per-example terms (first axis the rows) and batch
    scalars for the rows it is given. The group branches run in the batch's
    layout: with `rows_per_group` (a stratified curriculum batch, one block
    of rows per group) each on its block, else the branch of the batch's
    group (`ops.switch`: one group per batch). The shared branches run on
    every row, or, with `on_subsets` (eager PyTorch, which allows
    data-dependent shapes), on the rows they teach only.

    Returns:
        `(terms, taught)`: the per-example terms averaged over the branches
        that teach each example (0 where none does), scalars averaged over
        the branches by the rows they teach, and a 0/1 `(batch,)` mask of
        the taught examples.
    """
    cover = ops.take(ops.convert_to_tensor(plan.cover), labels, axis=0)
    runs = []
    if plan.group_branches and rows_per_group is not None:
        runs.append(_run_blocks(plan, run_branch, x, labels, logits, features,
                                rows_per_group))
    elif plan.group_branches:
        runs.append(_run_batch_group(plan, run_branch, x, labels, logits, features))
    for b, branch in enumerate(plan.shared_branches, start=len(plan.group_branches)):
        if on_subsets and not plan.covers_every_class(b):
            terms = _run_on_subset(branch, run_branch, x, logits, features, cover[:, b])
        else:
            terms = run_branch(branch, x, logits, features)
        runs.append((terms, cover[:, b]))
    return _combine(runs)


def _run_batch_group(plan, run_branch, x, labels, logits, features):
    """The branch of the batch's group, picked by `ops.switch`.

    Only that branch runs, so a step calls that group's teachers and no
    other; rows of another group (a mixed batch) are not taught.
    """
    groups = ops.take(ops.convert_to_tensor(plan.group_table), labels)
    batch_group = ops.minimum(groups[0], plan.grade - 1)
    branches = [
        lambda x, logits, features, b=branch: run_branch(b, x, logits, features)
        for branch in plan.group_branches
    ]
    terms = ops.switch(batch_group, branches, x, logits, features)
    taught = ops.cast(ops.equal(groups, batch_group), "float32") * ops.take(
        ops.convert_to_tensor(plan.group_has_teacher), batch_group
    )
    return terms, taught


def _run_blocks(plan, run_branch, x, labels, logits, features, rows_per_group):
    """Each group's branch on its block of a stratified batch.

    The curriculum lays a batch out in contiguous blocks, one per seen
    group (`CurriculumDataset.block_sizes()`), so the step costs one teacher
    pass over the batch whatever the number of groups. Rows whose label is
    not their block's group are not taught. Batch scalars are computed
    within each block and averaged over the taught blocks by row count.
    """
    groups = ops.take(ops.convert_to_tensor(plan.group_table), labels)
    parts, taught, sizes, start = [], [], [], 0
    for group, size in enumerate(rows_per_group):
        stop = start + size

        def cut(t, start=start, stop=stop):
            return t[start:stop]

        parts.append(
            run_branch(
                plan.group_branches[group],
                keras.tree.map_structure(cut, x),
                logits[start:stop],
                None if features is None else keras.tree.map_structure(cut, features),
            )
        )
        has_teacher = float(plan.group_has_teacher[group])
        taught.append(ops.cast(ops.equal(groups[start:stop], group), "float32") * has_teacher)
        sizes.append(size * has_teacher)
        start = stop
    terms = {}
    for key, value in parts[0].items():
        if len(ops.shape(value)) == 0:
            weighted = sum(size * part[key] for size, part in zip(sizes, parts))
            terms[key] = weighted / max(sum(sizes), 1.0)
        else:
            terms[key] = ops.concatenate([part[key] for part in parts], axis=0)
    return terms, ops.concatenate(taught, axis=0)


def _run_on_subset(branch, run_branch, x, logits, features, rows):
    """A branch run on the rows it teaches only, scattered back (PyTorch).

    K specialists over disjoint classes then cost about one teacher pass per
    batch instead of K.
    """
    import torch

    index = torch.nonzero(rows).squeeze(1)

    def cut(t):
        return t[index]

    terms = run_branch(
        branch,
        keras.tree.map_structure(cut, x),
        logits[index],
        None if features is None else keras.tree.map_structure(cut, features),
    )
    scattered = {}
    for key, value in terms.items():
        if len(value.shape) == 0:
            scattered[key] = value
            continue
        full = torch.zeros((logits.shape[0],) + tuple(value.shape[1:]),
                           dtype=value.dtype, device=value.device)
        scattered[key] = full.index_add(0, index, value)
    return scattered


def _combine(runs):
    """Per-example terms: the mean over the runs that teach the example."""
    if len(runs) == 1:
        terms, taught = runs[0]
        count = taught
    else:
        count = sum(taught for _, taught in runs)
    combined = {}
    for key in runs[0][0]:
        values = [(terms[key], taught) for terms, taught in runs]
        if len(ops.shape(values[0][0])) == 0:
            combined[key] = _mean_scalar(values)
            continue
        total = 0.0
        for value, taught in values:
            total = total + _rows(taught, value) * value
        combined[key] = total / _rows(ops.maximum(count, 1.0), total)
    return combined, ops.minimum(count, 1.0)


def _mean_scalar(values):
    """Batch scalars of several runs, averaged by the rows each teaches."""
    if len(values) == 1:
        return values[0][0]
    weights = [ops.sum(taught) for _, taught in values]
    total = sum(w * value for w, (value, _) in zip(weights, values))
    return total / ops.maximum(sum(weights), 1.0)


def _rows(mask, like):
    """`mask` `(batch,)` broadcast against `like` `(batch, ...)`."""
    for _ in range(len(ops.shape(like)) - 1):
        mask = ops.expand_dims(mask, -1)
    return mask
