"""What happens at a grade boundary of education distillation.

`switch_grade` is the whole switch, in order: build the next grade's
student graph from the shared stages (surviving layers keep their trained
weights), initialise its new layers (`keras_edu.growth`), put it in the
Distiller's place with the grade's routing plan, widen the curriculum of the
running `fit`, rebuild the optimizer for the new variables and the train,
test and predict functions. `fit_curriculum` is a graded `fit`, and
`curriculum_for_fit` the data it starts on.

Resuming: a graded distiller's weights file records its grade
(`record_grade`), and `Distiller.load_weights` (so also `BackupAndRestore`)
moves the student to that grade before the weights load; a backup written
at the end of the epoch before a boundary holds the old grade's student,
and the `GradeCallback` then grows it at the boundary exactly as an
uninterrupted run does.

Data flows one way: `GradeCallback` (or a user) calls
`Distiller.set_grade`, which calls `switch_grade`, and gives its curriculum
settings with `Distiller.configure_curriculum`; nothing here reads a
callback.
"""

import os

import keras
from keras import ops

from keras_edu import _keras_internals
from keras_edu import devices
from keras_edu import growth
from keras_edu.curriculum import CurriculumDataset


def switch_grade(
    distiller,
    grade,
    optimizer_state="reset",
    init_new_head_from_old=False,
    zero_init_residual=False,
):
    """Moves `distiller`'s graded student to `grade` (see `Distiller.set_grade`)."""
    graded, old_grade = distiller.graded_student, distiller.grade
    if graded is None:
        raise ValueError(
            "`set_grade` needs a Distiller whose student is a "
            "`keras_edu.GradedStudent`."
        )
    check_optimizer_state(optimizer_state)
    graded.partition._check_grade(grade)
    if grade == old_grade:
        return
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


def check_optimizer_state(optimizer_state):
    if optimizer_state not in ("reset", "carry"):
        raise ValueError(
            "`optimizer_state` must be 'reset' or 'carry'. Received: "
            f"optimizer_state={optimizer_state!r}."
        )
    return optimizer_state


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


def fit_curriculum(distiller, keras_fit, x, y, *, batch_size, epochs, verbose,
                   callbacks, shuffle, initial_epoch, **kwargs):
    """A graded `Distiller.fit`: `keras_fit` over the curriculum of `x`, `y`.

    The callbacks come first: handed the model, a `GradeCallback` gives the
    curriculum's settings (`Distiller.configure_curriculum`); then the data
    is built at the distiller's grade, and a switch inside the run can
    resize its epochs (`CurriculumDataset.served_by_fit`) and the
    callbacks' step count.
    """
    verbose = 1 if verbose == "auto" else verbose
    distiller._curriculum_options = {}
    distiller._fit_callbacks = callbacks = keras.callbacks.CallbackList(
        callbacks,
        add_history=True,
        add_progbar=verbose != 0,
        verbose=verbose,
        epochs=epochs,
        steps=None,  # known once the curriculum is built, below
        model=distiller,
    )
    data = curriculum_for_fit(
        distiller, x, y, batch_size, shuffle, distiller._curriculum_options
    )
    callbacks.set_params(dict(callbacks.params, steps=len(data)))
    distiller._curriculum, distiller._rows_per_group = data, data.block_sizes()
    try:
        with data.served_by_fit():
            return keras_fit(
                data, epochs=epochs, verbose=verbose, callbacks=callbacks,
                shuffle=False, initial_epoch=initial_epoch, **kwargs,
            )
    finally:
        distiller._curriculum = distiller._fit_callbacks = None
        distiller._rows_per_group = None


def curriculum_for_fit(distiller, x, y, batch_size, shuffle, options):
    """The `CurriculumDataset` a graded `fit` trains on, at the distiller's grade.

    `options` are the `order`, `seed` and `replay_weight` a `GradeCallback`
    gave (`Distiller.configure_curriculum`); a `CurriculumDataset` passed as
    `x` keeps its own.
    """
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
        shuffle=shuffle,
        grade=distiller.grade,
        **options,
        **devices.jax_process_share(),
    )


# The grade of a graded student's weights file, an attribute of its root.
_GRADE_ATTRIBUTE = "keras_edu_grade"


def record_grade(filepath, grade):
    """Writes `grade` into the `.weights.h5` file at `filepath`.

    A weights file holds one grade's student; `recorded_grade` tells a
    distiller which, so `load_weights` (and `BackupAndRestore` resuming
    through it) first moves the student to that grade. Sharded weights
    (`max_shard_size`) carry no grade.
    """
    import h5py

    filepath = str(filepath)
    if filepath.endswith(".h5") and os.path.exists(filepath):
        with h5py.File(filepath, "a") as f:
            f.attrs[_GRADE_ATTRIBUTE] = int(grade)


def recorded_grade(filepath):
    """The grade `record_grade` wrote into `filepath`, or None."""
    import h5py

    filepath = str(filepath)
    if not (filepath.endswith(".h5") and os.path.exists(filepath)):
        return None
    with h5py.File(filepath, "r") as f:
        grade = f.attrs.get(_GRADE_ATTRIBUTE)
    return None if grade is None else int(grade)
