"""`GradeCallback`: grows a graded student at epoch boundaries inside `fit()`."""

import bisect
import logging
import math
import warnings

import keras

from keras_edu import grade_switch
from keras_edu import growth
from keras_edu import schedules
from keras_edu.curriculum import DEFAULT_ORDER
from keras_edu.curriculum import ORDERS
from keras_edu.utils import check_integer
from keras_edu.utils import check_positive

logger = logging.getLogger("keras_edu")


class GradeCallback(keras.callbacks.Callback):
    """Moves a `keras_edu.Distiller`'s graded student up one grade at each boundary.

    Grade `g + 1` starts at epoch `boundaries[g - 1]` (0-based epochs, as
    in `fit`). At a boundary the Distiller builds the next grade's student
    (surviving layers keep their weights, the new stage and
    teaching-reference block are freshly initialised, the old block is
    dropped), rebuilds the optimizer and its train function, and widens the
    curriculum to the next group of classes and its teacher. Everything
    happens inside one `fit()` call: learning-rate schedules, History,
    ModelCheckpoint, EarlyStopping and the other callbacks see one run, and
    every epoch's logs carry the `grade`.

    Args:
        boundaries: When grades 2..K start, one per grade after the first:
            strictly increasing epochs (ints, 0-based as in `fit`), or
            fractions of the run in (0, 1) (floats), e.g. `[0.625, 0.75]`
            for the reference's 150 and 180 of 240 epochs. A fraction `f`
            starts its grade at epoch `floor(f * epochs + 0.5)`.
        optimizer_state: `"reset"` (default, as the reference code: fresh
            optimizer slots, e.g. momentum) or `"carry"` (keep the slots of
            the variables that survive the switch). The iteration count and
            the current learning rate always carry over.
        init_new_head_from_old: Copy the rows of the classes already seen
            from the old classifier into the new one when shapes allow.
            Defaults to False (faithful to the method).
        zero_init_residual: Start every residual block of a new stage as
            its shortcut path (the last BatchNorm of its residual branch
            gets `gamma = 0`; `keras_edu.growth.zero_init_residual_branches`).
            Defaults to False (faithful to the method).
        batchnorm_samples: Re-estimate the BatchNorm moving statistics of the
            new grade's student on about this many training samples of its
            seen groups right after each switch
            (`keras_edu.growth.reestimate_batchnorm_statistics`), so that it
            evaluates sensibly before training has moved the averages.
            Training itself uses batch statistics, so this changes what the
            student predicts at a switch, not how it trains. Defaults to 0
            (off, as the method).
        order: Batch layout of the curriculum built by `Distiller.fit`:
            `"stratified"` (default; every batch holds all seen groups in
            proportion, each specialist distils its own rows),
            `"interleaved"` (batches of one group each, in random order) or
            `"sequential"` (all group-1 batches, then group 2, ..., as the
            reference code). See `keras_edu.CurriculumDataset`.
        seed: Seed of the curriculum's shuffles.
        replay_weight: Loss weight of the samples of the groups seen at
            earlier grades, relative to the grade's new group
            (`keras_edu.CurriculumDataset(replay_weight=...)`). Defaults to
            1.0 (every sample weighs the same), the measured best
            (docs/results.md, "Replay weight").
        precompile: Deprecated, accepted for compatibility: `"auto"`
            (default), `True` or `False`. Nothing compiles the next grade's
            train step ahead any more; Keras compiles it at the switch, and
            a persistent compilation cache (docs/education.md, "Grade-switch
            cost") removes that compile from reruns. `True` warns.
            `precompiled_grades` stays an empty list.

    `order`, `seed` and `replay_weight` are settings of the curriculum
    `Distiller.fit` builds from arrays; the callback gives them to the
    Distiller when `fit` hands it the model
    (`Distiller.configure_curriculum`). A `CurriculumDataset` passed to
    `fit` keeps its own.

    When the optimizer's learning rate is a
    `keras_edu.schedules.PerGradeCosineDecay` without `grade_steps`, the
    callback sets them when `fit` starts, from the curriculum's batches per
    epoch of each grade, so the schedule restarts at every boundary.
    `GradeCallback.faithful(boundaries)` is the reference code's
    configuration (METHOD.md section 1).

    Example:

    ```python
    import keras, numpy as np
    import keras_edu

    partition = keras_edu.ClassPartition.contiguous(6, "1:1:1")
    def stage(filters):
        return keras.Sequential([keras.layers.Conv2D(filters, 3, padding="same"),
                                 keras.layers.ReLU()])
    head = keras.Sequential([keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dense(6)])
    student = keras_edu.GradedStudent([stage(4), stage(8), stage(8)], head,
                                      partition, input_shape=(8, 8, 1))
    def specialist(classes):
        model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                  keras.layers.Dense(len(classes))])
        return keras_edu.Teacher(model, classes=classes)
    teachers = [specialist(g) for g in partition.groups]
    distiller = keras_edu.Distiller(student, teachers)
    distiller.compile(optimizer="sgd", metrics=["accuracy"])
    x = np.random.rand(60, 8, 8, 1).astype("float32")
    y = np.repeat(np.arange(6), 10)
    history = distiller.fit(x, y, epochs=3, batch_size=10, verbose=0,
                            callbacks=[keras_edu.GradeCallback(boundaries=[1, 2])])
    history.history["grade"]  # [1, 2, 3]
    final = distiller.graduate()  # the target architecture, 6 logits
    ```
    """

    def __init__(
        self,
        boundaries,
        optimizer_state="reset",
        init_new_head_from_old=False,
        order=DEFAULT_ORDER,
        seed=None,
        precompile="auto",
        zero_init_residual=False,
        batchnorm_samples=0,
        replay_weight=1.0,
    ):
        super().__init__()
        self.boundaries = _check_boundaries(boundaries)
        self._epoch_boundaries = (
            None if _are_fractions(self.boundaries) else self.boundaries
        )
        if order not in ORDERS:
            raise ValueError(f"`order` must be one of {ORDERS}. Received: order={order!r}.")
        self.optimizer_state = grade_switch.check_optimizer_state(optimizer_state)
        self.init_new_head_from_old = bool(init_new_head_from_old)
        self.zero_init_residual = bool(zero_init_residual)
        self.batchnorm_samples = check_integer(
            batchnorm_samples,
            "batchnorm_samples",
            minimum=0,
            meaning=" (0 turns the re-estimation off)",
        )
        self.order = order
        self.seed = seed
        self.replay_weight = check_positive(replay_weight, "replay_weight")
        self.precompile = _check_precompile(precompile)
        # Always empty since nothing compiles ahead; kept for old readers.
        self.precompiled_grades = []

    @classmethod
    def faithful(cls, boundaries, seed=None):
        """The reference code's grade switch (METHOD.md section 1).

        Group-by-group batches (`order="sequential"`), a fresh optimizer and
        a freshly initialised new stage and classifier at every boundary.
        """
        return cls(
            boundaries,
            optimizer_state="reset",
            init_new_head_from_old=False,
            order="sequential",
            seed=seed,
            zero_init_residual=False,
        )

    @property
    def epoch_boundaries(self):
        """The epochs at which grades 2..K start (fractions resolved by `fit`)."""
        if self._epoch_boundaries is None:
            raise ValueError(
                f"`boundaries={self.boundaries}` are fractions of the run; "
                "their epochs are known once `fit` starts (or after "
                "`validate(distiller, epochs)`)."
            )
        return self._epoch_boundaries

    def boundaries_for(self, epochs):
        """The epochs at which grades 2..K start in a run of `epochs` epochs."""
        if not _are_fractions(self.boundaries):
            return list(self.boundaries)
        return _fractions_to_epochs(self.boundaries, epochs)

    def grade_at(self, epoch):
        """The grade (1-based) that trains during `epoch` (0-based)."""
        return 1 + bisect.bisect_right(self.epoch_boundaries, epoch)

    def validate(self, distiller, epochs):
        """Checks the schedule against the distiller and the epoch budget.

        Fractional boundaries are resolved to epochs of this run here.
        """
        if math.isfinite(epochs):
            self._epoch_boundaries = self.boundaries_for(epochs)
        graded = getattr(distiller, "graded_student", None)
        if graded is None:
            raise ValueError(
                "GradeCallback needs a `keras_edu.Distiller` whose student is "
                "a `keras_edu.GradedStudent`; this model has no grades. Remove "
                "the callback or build the student with `GradedStudent`."
            )
        if len(self.boundaries) != graded.num_grades - 1:
            raise ValueError(
                f"The student has {graded.num_grades} grades, so `boundaries` "
                f"needs {graded.num_grades - 1} epochs (one per grade after the "
                f"first). Received: boundaries={self.boundaries}."
            )
        if self.epoch_boundaries and self.epoch_boundaries[-1] >= epochs:
            raise ValueError(
                f"`boundaries` must be < epochs={epochs}, or the last grades "
                f"never train. Received: boundaries={self.boundaries}."
            )

    def grade_steps(self, curriculum, epochs):
        """Training steps of each grade in a run of `epochs` epochs."""
        starts = [0] + list(self.epoch_boundaries) + [epochs]
        return [
            (starts[g] - starts[g - 1]) * curriculum.steps_for_grade(g)
            for g in range(1, len(starts))
        ]

    def set_model(self, model):
        super().set_model(model)
        configure = getattr(model, "configure_curriculum", None)
        if configure is not None:
            configure(order=self.order, seed=self.seed, replay_weight=self.replay_weight)

    def on_train_begin(self, logs=None):
        epochs = self.params.get("epochs", float("inf"))
        self.validate(self.model, epochs)
        self._size_per_grade_schedule(epochs)

    def _size_per_grade_schedule(self, epochs):
        optimizer = getattr(self.model, "optimizer", None)
        schedule = schedules.per_grade_schedule(optimizer)
        curriculum = getattr(self.model, "curriculum", None)
        if schedule is None or curriculum is None or not math.isfinite(epochs):
            return
        steps = self.grade_steps(curriculum, epochs)
        if schedule.grade_steps is None:
            schedule.set_grade_steps(steps)
        elif schedule.grade_steps != steps:
            logger.warning(
                "The PerGradeCosineDecay's grade_steps=%s differ from this "
                "run's steps per grade %s: it will not restart at the "
                "boundaries. Leave grade_steps=None to let GradeCallback set "
                "them.",
                schedule.grade_steps,
                steps,
            )

    def on_epoch_begin(self, epoch, logs=None):
        grade = self.grade_at(epoch)
        if grade != self.model.grade:
            self.model.set_grade(
                grade,
                optimizer_state=self.optimizer_state,
                init_new_head_from_old=self.init_new_head_from_old,
                zero_init_residual=self.zero_init_residual,
            )
            self._reestimate_batchnorm()

    def _reestimate_batchnorm(self):
        curriculum = self.model.curriculum
        if not self.batchnorm_samples or curriculum is None:
            return
        growth.reestimate_batchnorm_statistics(
            self.model.student, curriculum.seen_group_inputs(self.batchnorm_samples)
        )

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["grade"] = self.model.grade


def _check_boundaries(boundaries):
    values = list(boundaries) if isinstance(boundaries, (list, tuple)) else None
    epochs = values is not None and all(
        isinstance(b, int) and not isinstance(b, bool) for b in values
    )
    if values is None or not (epochs or _are_fractions(values)):
        raise ValueError(
            "`boundaries` must be a list of integer epochs, or of fractions of "
            "the run in (0, 1) such as [0.625, 0.75]. Received: "
            f"boundaries={boundaries!r}."
        )
    if epochs and any(b < 1 for b in values):
        raise ValueError(
            "`boundaries` must be >= 1: grade 1 trains from epoch 0. Received: "
            f"boundaries={values}."
        )
    if any(b >= a for a, b in zip(values[1:], values[:-1])):
        raise ValueError(
            "`boundaries` must be strictly increasing. Received: "
            f"boundaries={values}."
        )
    return values


def _are_fractions(values):
    return bool(values) and all(
        isinstance(b, float) and 0.0 < b < 1.0 for b in values
    )


def _fractions_to_epochs(fractions, epochs):
    resolved = [math.floor(f * epochs + 0.5) for f in fractions]
    increasing = all(a < b for a, b in zip(resolved, resolved[1:]))
    if resolved[0] < 1 or resolved[-1] >= epochs or not increasing:
        raise ValueError(
            f"`boundaries={fractions}` give the epochs {resolved} in a run of "
            f"{epochs} epochs: every grade needs at least one epoch. Train for "
            "more epochs or give the boundaries as epochs."
        )
    return resolved


def _check_precompile(precompile):
    if not (isinstance(precompile, bool) or precompile == "auto"):
        raise ValueError(
            "`precompile` must be 'auto', True or False. Received: "
            f"precompile={precompile!r}."
        )
    if precompile is True:
        warnings.warn(
            "`GradeCallback(precompile=True)` no longer compiles the next "
            "grade's train step ahead: Keras compiles it at the switch, on "
            "every backend. Use a persistent compilation cache to take the "
            "compile off reruns (docs/education.md, 'Grade-switch cost'), "
            "and drop the argument.",
            DeprecationWarning,
            stacklevel=3,
        )
    return precompile
