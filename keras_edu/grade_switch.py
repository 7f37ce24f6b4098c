"""What happens at a grade boundary of education distillation.

`switch_grade` is the whole switch, in order: build the next grade's
student graph from the shared stages (surviving layers keep their trained
weights), initialise its new layers (`keras_edu.growth`), put it in the
Distiller's place with the grade's routing plan, widen the curriculum of the
running `fit`, rebuild the optimizer for the new variables and the train,
test and predict functions. `curriculum_for_fit` is how a graded `fit`
starts: the schedule is checked and, when resuming from a
`BackupAndRestore` backup, the student is moved to the backup's grade
before the backup's weights load.

Data flows one way: `GradeCallback` (or a user) calls
`Distiller.set_grade`, which calls `switch_grade`; nothing here calls back
into a callback.
"""

import keras
from keras import ops

from keras_edu import _keras_internals
from keras_edu import devices
from keras_edu import growth
from keras_edu.curriculum import DEFAULT_ORDER
from keras_edu.curriculum import CurriculumDataset
from keras_edu.grade_callback import GradeCallback


def switch_grade(
    distiller,
    grade,
    optimizer_state="reset",
    init_new_head_from_old=False,
    zero_init_residual=False,
):
    """Moves `distiller`'s graded student to `grade` (see `Distiller.set_grade`)."""
    graded, old_grade = distiller.graded_student, distiller.grade
    student = graded.model_for_grade(grade)
    if init_new_head_from_old:
        growth.copy_seen_class_rows(
            graded._heads()[old_grade - 1],
            graded._heads()[grade - 1],
            graded.classes_for_grade(old_grade),
            graded.classes_for_grade(grade),
        )
    if zero_init_residual:
        for stage in graded.stages[old_grade:grade]:
            growth.zero_init_residual_branches(stage)
    replace_student(distiller, grade, student)
    curriculum = distiller.curriculum
    if curriculum is not None:
        curriculum.set_grade(grade)
        distiller._rows_per_group = curriculum.block_sizes()
        callbacks = distiller._fit_callbacks
        callbacks.set_params(dict(callbacks.params, steps=len(curriculum)))
    if getattr(distiller, "optimizer", None) is not None:
        distiller.optimizer = rebuild_optimizer(
            distiller.optimizer,
            distiller.trainable_variables,
            carry=optimizer_state == "carry",
        )
    if distiller.compiled:
        distiller.make_train_function(force=True)
        distiller.make_test_function(force=True)
        distiller.make_predict_function(force=True)


def replace_student(distiller, grade, student):
    """Tracks `student` in place of the old one, with the grade's routing."""
    _keras_internals.replace_tracked(distiller, _student=student)
    distiller.grade = grade
    distiller._plan = distiller.routing_plan(grade)
    # AMTML: a fresh TeacherImportance for the new last stage, and the
    # hints that teach at this grade (docs/many_teachers.md).
    distiller._wiring.refresh()


def rebuild_optimizer(old, variables, carry):
    """A copy of `old` built for `variables`, at `old`'s step and rate.

    The iteration count and the learning rate carry over, so schedules
    continue. With `carry`, the slots (e.g. momentum) of the variables that
    survive the switch (same path and shape) are copied too.
    """
    new = keras.optimizers.deserialize(keras.optimizers.serialize(old))
    # Build now: the JAX trainer reads the optimizer's variables when the
    # next epoch starts.
    new.build(variables)
    new.iterations.assign(old.iterations)
    inner = getattr(old, "inner_optimizer", old)
    if not isinstance(inner._learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        # Keep changes made by callbacks such as ReduceLROnPlateau.
        new.learning_rate = float(ops.convert_to_numpy(old.learning_rate))
    if carry:
        previous = {v.path: v for v in old.variables}
        for variable in new.variables:
            match = previous.get(variable.path)
            if (
                match is not None
                and variable is not new.iterations
                and tuple(match.shape) == tuple(variable.shape)
            ):
                variable.assign(match)
    return new


def curriculum_for_fit(distiller, x, y, batch_size, shuffle, epochs, initial_epoch, callbacks):
    """The `CurriculumDataset` a graded `fit` trains on, at the right grade."""
    schedule = next((c for c in callbacks if isinstance(c, GradeCallback)), None)
    if schedule is not None:
        schedule.validate(distiller, epochs)
        # Take the grade of the weights BackupAndRestore will load *before*
        # it loads them. A backup written at the end of the epoch before a
        # boundary holds the old grade's student: resume there, and the
        # callback then grows it at the boundary exactly as an
        # uninterrupted run does.
        distiller.set_grade(
            schedule.grade_at(_backup_epoch(callbacks, initial_epoch)),
            optimizer_state=schedule.optimizer_state,
        )
    partition = distiller.graded_student.partition
    if isinstance(x, CurriculumDataset):
        if x.partition != partition:
            raise ValueError(
                "The CurriculumDataset's partition differs from the "
                "student's. Build it with `partition=` the student's."
            )
        x.set_grade(distiller.grade)
        return x
    if isinstance(x, keras.utils.PyDataset):
        raise ValueError(
            "A graded student trains on a `keras_edu.CurriculumDataset`; "
            "pass arrays, an unbatched `tf.data.Dataset` of (input, label), "
            "or a CurriculumDataset instead of another PyDataset."
        )
    return CurriculumDataset(
        x,
        y,
        partition=partition,
        batch_size=batch_size or 32,
        order=schedule.order if schedule else DEFAULT_ORDER,
        shuffle=shuffle,
        seed=schedule.seed if schedule else None,
        grade=distiller.grade,
        **devices.jax_process_share(),
    )


def _backup_epoch(callbacks, initial_epoch):
    """The epoch whose student a `BackupAndRestore` in `callbacks` holds.

    Keras records the epoch training resumes at and the batches of it
    already seen: 0 when the backup was written at the end of the epoch
    before (whose student it then holds), more when written inside it.
    Without a backup, `initial_epoch`.
    """
    for callback in callbacks:
        if isinstance(callback, keras.callbacks.BackupAndRestore):
            metadata = _keras_internals.backup_metadata(callback)
            if metadata is not None:
                epoch = metadata["epoch"]
                inside = metadata.get("batch", 0) > 0
                return epoch if inside or epoch == 0 else epoch - 1
    return initial_epoch
