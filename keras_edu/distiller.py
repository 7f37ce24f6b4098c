"""`Distiller`: train a student from one or many frozen teachers."""

import keras
import numpy as np
from keras import ops

from keras_edu import _keras_internals
from keras_edu import devices
from keras_edu import distiller_checks as checks
from keras_edu import grade_switch
from keras_edu import teacher_cache
from keras_edu.graded_student import GradedStudent
from keras_edu.label_checks import BadLabelCount
from keras_edu.label_checks import StopOnBadLabels
from keras_edu.routing import RoutingPlan
from keras_edu.routing import check_curriculum_teachers
from keras_edu.routing import distil_batch
from keras_edu.student_loss import grade_columns
from keras_edu.student_loss import sparse_labels
from keras_edu.student_loss import student_cross_entropy
from keras_edu.term_wiring import wiring_for
from keras_edu.utils import check_positive
from keras_edu.utils import check_probability


@keras.saving.register_keras_serializable(package="keras_edu")
class Distiller(keras.Model):
    """Trains a student from one or many frozen teachers.

    The training loss of a batch is

        loss = alpha * CE(z, y) + (1 - alpha) * KD

    where `z` are the student's logits, `y` the labels and `KD` the
    distillation term averaged over the examples that have a teacher. By
    default (`loss=None`) the term is Hinton's
    `T^2 * KL(softmax(t / T) || softmax(z[:, classes] / T))`, taken at the
    classes the teacher covers (`keras_edu.losses.SoftTargetKD`).

    Routing: each example is distilled by the teachers that cover its label.
    Specialists over disjoint classes give each example exactly one teacher;
    examples that no teacher covers get the cross-entropy only. Teachers that
    cover the same classes form an ensemble whose probabilities are averaged
    (AVER) unless `loss` says otherwise.

    With `loss=keras_edu.losses.AMTML(...)` (adaptive multi-teacher
    multi-level distillation) the ensemble is mixed with learned
    per-example weights and the loss gains hint and relational terms that
    `1 - alpha` does not scale; see `AMTML`. The Distiller then tracks the
    `teacher_importance` layer and the `hint_regressors` (trained, saved,
    not part of the student), and in training its forward pass returns
    `{"logits": ..., "features": {...}}` from one pass of the student.

    Teachers run in inference mode, outside the gradient, and are never
    updated. `evaluate()` and `predict()` use the student alone, and the
    evaluation loss is the student's cross-entropy. Use it like any Keras
    model: `compile(optimizer=..., metrics=...)` (no `loss=`: the Distiller
    computes its own), then `fit`, `evaluate`, `predict`. The student must
    output logits.

    Args:
        student: The `keras.Model` to train. Its outputs are logits over
            all classes. After training, `distiller.student` is a plain Keras
            model that loads without keras_edu.
        teachers: A list of `keras_edu.Teacher` (or bare `keras.Model`s,
            taken as teachers of all classes in order).
        alpha: Weight of the cross-entropy on the labels, in `[0, 1]`;
            `1 - alpha` weighs the distillation term. Defaults to `0.3`.
        temperature: Softmax temperature of the distillation term, `> 0`.
            Defaults to `4.0`. A `loss` with its own temperature keeps it.
        loss: A `keras.distillation.DistillationLoss`. keras_edu terms (with
            a `per_sample_loss` method) are routed per example; a core Keras
            term (only `compute_loss`) needs teachers that cover every class.
            `None` (default) is `keras_edu.losses.SoftTargetKD`.
            `keras_edu.losses.AMTML` is wired in specially (above).
        generalists_teach: With a `GradedStudent`, what a teacher of all
            classes (a generalist) teaches. `"seen"`: every class seen at
            the current grade, on every example, beside the group's
            specialists (an example's distillation loss is then the mean of
            its specialists' term and the generalists' term), so the
            student also learns how the groups differ. `"group"`: like a
            specialist, each example's group's classes only (the
            reference's routing). `"auto"` (default): `"seen"`, the
            measured best (docs/results.md), or `"group"` with `AMTML`,
            which does not support `"seen"`.
        specialists_until_grade: With a `GradedStudent`, the last grade at
            which the specialists (teachers of one group) teach; from the
            next grade on only the generalists do, so each example costs one
            teacher pass fewer. `None`: the specialists teach at every
            grade. Needs a generalist among the teachers. Not with
            `AMTML`. `"auto"` (default): the last grade but one when a
            generalist teaches the seen classes (`generalists_teach`
            resolved to `"seen"`), measured best and cheaper; else `None`.
        cache_teachers: `False` (default): the teachers run on every
            training batch. `True`: `fit` runs each teacher once over the
            training arrays, keeps its outputs (logits, and the hint maps an
            `AMTML` loss reads) in memory, and the steps read them instead:
            an epoch then costs about what the student alone costs. A
            directory path: the same, kept in NumPy memmaps in that
            directory, for data whose outputs do not fit in memory. Each
            teacher runs on the samples it teaches only (its skipped rows
            are zeros; `teacher_cache_examples` counts, per teacher, the
            samples it ran on), except under `AMTML`, which reads every row.
            Needs `x` as a NumPy array (a dataset may augment, so its
            samples have no fixed outputs); computed again by each `fit`
            call. See
            docs/distiller.md ("Caching teacher outputs").
        name: The model's name.

    Example:

    ```python
    import keras, numpy as np
    import keras_edu

    def mlp(width):
        return keras.Sequential([keras.Input((8,)), keras.layers.Dense(width)])

    x = np.random.rand(64, 8).astype("float32")
    y = np.random.randint(0, 4, size=(64,))
    # Two specialists: classes 0-1 and classes 2-3.
    teachers = [
        keras_edu.Teacher(mlp(2), classes=[0, 1]),
        keras_edu.Teacher(mlp(2), classes=[2, 3]),
    ]
    distiller = keras_edu.Distiller(mlp(4), teachers, alpha=0.3, temperature=4.0)
    distiller.compile(optimizer="adam", metrics=["accuracy"])
    history = distiller.fit(x, y, epochs=1, batch_size=16, verbose=0)
    sorted(history.history)  # accuracy, distillation_loss, loss, student_loss
    student = distiller.student  # a plain keras.Model
    ```
    """

    def __init__(
        self,
        student,
        teachers,
        *,
        alpha=0.3,
        temperature=4.0,
        loss=None,
        grade=1,
        generalists_teach="auto",
        specialists_until_grade="auto",
        cache_teachers=False,
        name="distiller",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.cache_teachers = teacher_cache.check_cache_setting(cache_teachers)
        # Seconds the last `fit` spent filling the teacher cache.
        self.teacher_cache_seconds = self.teacher_cache_examples = None
        self.alpha = check_probability(alpha, "alpha")
        self.temperature = check_positive(temperature, "temperature")
        self.distillation_term = checks.resolve_loss(loss, self.temperature)
        self.generalists_teach = checks.resolve_generalists_teach(
            generalists_teach, self.distillation_term
        )
        self.graded_student = student if isinstance(student, GradedStudent) else None
        if self.graded_student is not None:
            self.graded_student.partition._check_grade(grade)
            student = self.graded_student.model_for_grade(grade)
        self.grade = grade if self.graded_student is not None else None
        self._student = checks.check_student(student)
        self.teachers = checks.wrap_teachers(teachers)
        self.num_classes = (
            self.graded_student.partition.num_classes
            if self.graded_student is not None
            else checks.student_width(self._student)
        )
        checks.check_teachers_match_student(self.teachers, self._student, self.num_classes)
        self._generalists = checks.generalists(self.teachers, self.num_classes)
        self.specialists_until_grade = checks.resolve_specialists_until_grade(
            specialists_until_grade, self.graded_student, self._generalists,
            self.generalists_teach, self.distillation_term,
        )
        if self.graded_student is not None:
            check_curriculum_teachers(
                self.graded_student.partition, [t.classes for t in self.teachers]
            )
            self.seen_accuracy_tracker = keras.metrics.Mean(name="seen_accuracy")
        else:
            # Labels that arrive batch by batch are counted in the step;
            # `fit` raises at the end of the first epoch that saw a bad one.
            self.label_check = BadLabelCount(self.num_classes)
        self._plan = self.routing_plan(grade)
        if self.graded_student is None:
            checks.check_loss_can_route(self.distillation_term, self._plan)
        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.distillation_loss_tracker = keras.metrics.Mean(name="distillation_loss")
        # Layers a term's wiring makes (AMTML's), trained and saved with the
        # Distiller but not part of the student.
        self.teacher_importance = None
        self.hint_regressors = []
        self._wiring = wiring_for(self)
        # Set while tracing a step; tells `compute_metrics` whether the step
        # was a training step (which logs the loss parts) or not.
        self._logging_distillation = False
        # The CurriculumDataset and CallbackList of a running graded `fit`,
        # and the settings a GradeCallback gave for its curriculum.
        self._curriculum = None
        self._fit_callbacks = None
        self._curriculum_options = {}
        # Rows per group of a stratified curriculum batch, during `fit`.
        self._rows_per_group = None
        # Student and teachers arrive built; so is the Distiller (callbacks
        # such as BackupAndRestore need a built model before `fit`).
        self.built = self._student.built

    @property
    def student(self):
        """The student being trained, a plain `keras.Model`."""
        return self._student

    @property
    def curriculum(self):
        """The `CurriculumDataset` that `fit` is serving a graded student.

        None outside `fit` and for a plain student. Callbacks read it to
        plan per grade (e.g. `GradeCallback` sizes a
        `keras_edu.schedules.PerGradeCosineDecay` from its steps per grade).
        """
        return self._curriculum

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """Configures training. Takes `keras.Model.compile`'s arguments but `loss`.

        The Distiller computes its own loss from `alpha`, `temperature` and
        its distillation term; passing `loss=` here is an error.
        """
        if loss is not None:
            raise ValueError(
                "Distiller.compile() does not take `loss`: the Distiller "
                "computes alpha * cross-entropy + (1 - alpha) * distillation "
                "itself. Remove `loss=` and set `alpha`, `temperature` or "
                f"`loss` on the Distiller instead. Received: loss={loss!r}."
            )
        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)

    def compile_from_config(self, config):
        # Called by `keras.saving.load_model`: restore the compile state
        # (optimizer, metrics) without the `loss` this class refuses, and
        # build the optimizer so its saved slots can load.
        config = keras.saving.deserialize_keras_object(config)
        config.pop("loss", None)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def build(self, input_shape=None):
        # Student and teachers are built models; nothing else holds state.
        self.built = True

    def call(self, inputs, training=None):
        return self._wiring.forward(teacher_cache.inputs_of(inputs), training)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        """`alpha * CE + (1 - alpha) * KD` (plus a term's own parts) of a batch.

        The cross-entropy is the student's on the labels
        (`keras_edu.student_loss`); the routing plan says which teachers
        distil which example, and `keras_edu.routing.distil_batch` runs them
        in the batch's layout; the term's wiring turns their terms into the
        loss (`keras_edu.term_wiring`). Evaluation runs no teacher.
        """
        if y_pred is None:
            y_pred = self(x, training=training)
        logits, features = self._wiring.split_prediction(y_pred)
        logits = ops.cast(logits, "float32")
        self._logging_distillation = bool(training)
        if training and self.graded_student is None:
            self.label_check.update_state(y)
        labels, student_loss = student_cross_entropy(
            y, logits, sample_weight,
            self._plan.label_to_column if self.graded_student is not None else None,
        )
        if not training:
            return self._add_regularization(student_loss)
        terms, taught = distil_batch(
            self._plan,
            self._wiring.run_branch,
            x,
            labels,
            logits,
            self._wiring.features_for(x, features),
            rows_per_group=self._rows_per_group,
            on_subsets=self._distil_on_subsets(),
        )
        self.student_loss_tracker.update_state(student_loss, ops.shape(logits)[0])
        total = self._wiring.total_loss(student_loss, terms, taught, sample_weight)
        return self._add_regularization(total)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        y_pred, _ = self._wiring.split_prediction(y_pred)
        if self.graded_student is not None:
            # Metrics see labels as logit positions of this grade; classes
            # not seen yet become -1 and always count as errors, so
            # `accuracy` is over all classes and `seen_accuracy` over the
            # classes seen so far.
            y = grade_columns(
                sparse_labels(y, self.num_classes), self._plan.label_to_column
            )
            correct = ops.cast(
                ops.equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), y),
                "float32",
            )
            self.seen_accuracy_tracker.update_state(
                correct, sample_weight=ops.cast(y >= 0, "float32")
            )
        logs = super().compute_metrics(x, y, y_pred, sample_weight)
        for key in self._wiring.hidden_log_keys:
            logs.pop(key, None)
        logs.pop("bad_labels", None)  # read by StopOnBadLabels, not logged
        if not self._logging_distillation:
            # Evaluation runs no teacher: do not log loss parts it never had.
            for key in self._wiring.log_keys:
                logs.pop(key, None)
        return logs

    def teacher_logits(self, x):
        """Every teacher's logits on `x`, float32 and without gradient."""
        return [
            self._wiring.teacher_output(k, x)["logits"] for k in range(len(self.teachers))
        ]

    def teacher_weights(self, x, batch_size=256):
        """The learned AMTML teacher weights `a(x)` of each example.

        Runs the student in inference mode and its `TeacherImportance` on
        the pooled last feature map, as in training: one row per example,
        one column per teacher, rows summing to 1. Feed the result to
        `keras_edu.visualize.teacher_weight_chart`.

        Args:
            x: Inputs, a NumPy array (or anything the student takes) with
                the examples on the first axis.
            batch_size: Examples per student pass.

        Returns:
            A float32 NumPy array of shape `(len(x), len(teachers))`.

        Example:

        ```python
        import keras, numpy as np
        import keras_edu

        def cnn(width):
            inputs = keras.Input((8, 8, 1))
            x = keras.layers.Conv2D(width, 3, activation="relu")(inputs)
            x = keras.layers.GlobalAveragePooling2D()(x)
            return keras.Model(inputs, keras.layers.Dense(3)(x))

        distiller = keras_edu.Distiller(
            cnn(4), [cnn(8), cnn(16)], loss=keras_edu.losses.AMTML()
        )
        x = np.random.rand(10, 8, 8, 1).astype("float32")
        distiller.teacher_weights(x).shape  # (10, 2), near 1/2 before training
        ```
        """
        checks.check_batch_size(batch_size)
        return self._wiring.teacher_weights(x, batch_size)

    def routing_plan(self, grade=None):
        """The `keras_edu.routing.RoutingPlan` of the student (at `grade`)."""
        teacher_classes = [t.classes for t in self.teachers]
        if self.graded_student is None:
            return RoutingPlan.for_teachers(teacher_classes, self.num_classes)
        until = self.specialists_until_grade
        retired = []
        if until is not None and grade > until:
            retired = [k for k in range(len(self.teachers)) if k not in self._generalists]
        return RoutingPlan.for_grade(
            self.graded_student.partition,
            grade,
            teacher_classes,
            seen_teachers=self._generalists if self.generalists_teach == "seen" else [],
            retired_teachers=retired,
        )

    def _distil_on_subsets(self):
        # Eager PyTorch allows data-dependent batch sizes: a teacher then
        # runs on the examples it teaches only.
        return keras.backend.backend() == "torch" and not self.jit_compile

    def _add_regularization(self, loss):
        # Weight regularizers and `add_loss` terms of the student, as the
        # default `Model.compute_loss` adds them.
        for extra in self.losses:
            loss = loss + ops.cast(ops.sum(extra), "float32")
        return _keras_internals.scale_loss_for_distribution(loss)

    def graduate(self):
        """The trained student as a plain Keras model.

        For a `GradedStudent`, the target architecture (last grade) with the
        weights trained so far and no teaching-reference block; otherwise
        the student itself.
        """
        if self.graded_student is None:
            return self._student
        return self.graded_student.graduate()

    def set_grade(
        self,
        grade,
        optimizer_state="reset",
        init_new_head_from_old=False,
        zero_init_residual=False,
    ):
        """Moves a graded student to `grade` (normally `GradeCallback`'s job).

        Surviving layers keep their trained weights; the optimizer and the
        train, test and predict functions are rebuilt. The whole switch, in
        order, is `keras_edu.grade_switch.switch_grade`.

        Args:
            grade: The grade to move to (1-based).
            optimizer_state: `"reset"` (new slots, as the reference code) or
                `"carry"` (keep the slots, e.g. momentum, of variables that
                survive).
            init_new_head_from_old: Copy the classifier rows of the classes
                the old block already predicted into the new block when
                their shapes allow.
            zero_init_residual: Start every residual block of the stages
                the student gains as its shortcut path
                (`keras_edu.growth.zero_init_residual_branches`).
        """
        grade_switch.switch_grade(
            self, grade, optimizer_state, init_new_head_from_old, zero_init_residual
        )

    def fit(
        self,
        x=None,
        y=None,
        batch_size=None,
        epochs=1,
        verbose="auto",
        callbacks=None,
        shuffle=True,
        initial_epoch=0,
        **kwargs,
    ):
        """Trains like `keras.Model.fit`; graded students follow a curriculum.

        With a `GradedStudent`, `x`/`y` (arrays, or an unbatched
        `tf.data.Dataset` of `(input, label)`) are served as a
        `CurriculumDataset` of the groups `1..grade` only
        (`keras_edu.grade_switch.fit_curriculum`). Pass a
        `keras_edu.GradeCallback` to grow the student during the run.

        Before the first step, labels outside the student's classes, input
        arrays that do not fit the student, NaN or Inf inputs and teachers
        whose logits are not finite raise a ValueError naming the argument
        or the teacher (`keras_edu.distiller_checks.check_fit_inputs`).
        """
        devices.check_devices_are_supported(self.graded_student is not None)
        checks.check_fit_inputs(x, y, batch_size, self)
        if self.cache_teachers:
            x = teacher_cache.attach_for_fit(self, x, y)
        if self.graded_student is None:
            callbacks = list(callbacks or []) + [StopOnBadLabels(self.label_check)]
            return super().fit(
                x, y, batch_size=batch_size, epochs=epochs, verbose=verbose,
                callbacks=callbacks, shuffle=shuffle,
                initial_epoch=initial_epoch, **kwargs,
            )
        return grade_switch.fit_curriculum(
            self, super().fit, x, y, batch_size=batch_size, epochs=epochs,
            verbose=verbose, callbacks=callbacks, shuffle=shuffle,
            initial_epoch=initial_epoch, **kwargs,
        )

    def configure_curriculum(self, order=None, seed=None, replay_weight=1.0):
        """Settings of the `CurriculumDataset` the running graded `fit` builds.

        A `GradeCallback` calls it with its own settings when `fit` hands it
        the model, before the data is built; a `CurriculumDataset` passed to
        `fit` keeps its own. `order=None` is the curriculum's default.
        """
        self._curriculum_options = {"seed": seed, "replay_weight": replay_weight}
        if order is not None:
            self._curriculum_options["order"] = order

    def save_weights(self, filepath, overwrite=True, **kwargs):
        """`keras.Model.save_weights`; a graded student's file records its grade."""
        super().save_weights(filepath, overwrite=overwrite, **kwargs)
        if self.graded_student is not None:
            grade_switch.record_grade(filepath, self.grade)

    def load_weights(self, filepath, skip_mismatch=False, **kwargs):
        """`keras.Model.load_weights`, at the grade the file records.

        A graded student first moves to the grade its weights were saved at
        (so `BackupAndRestore` resumes a curriculum in the right grade).
        """
        grade = grade_switch.recorded_grade(filepath)
        if self.graded_student is not None and grade is not None:
            self.set_grade(grade)
        super().load_weights(filepath, skip_mismatch=skip_mismatch, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "student": (
                    {"graded_student": self.graded_student.get_config()}
                    if self.graded_student is not None
                    else keras.saving.serialize_keras_object(self._student)
                ),
                "grade": self.grade,
                "teachers": [
                    keras.saving.serialize_keras_object(t) for t in self.teachers
                ],
                "alpha": self.alpha,
                "temperature": self.temperature,
                "generalists_teach": self.generalists_teach,
                "specialists_until_grade": self.specialists_until_grade,
                "cache_teachers": self.cache_teachers,
                "loss": keras.saving.serialize_keras_object(
                    self.distillation_term
                ),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        student = config["student"]
        if isinstance(student, dict) and "graded_student" in student:
            config["student"] = GradedStudent.from_config(student["graded_student"])
        else:
            config["student"] = keras.saving.deserialize_keras_object(student)
            config.pop("grade", None)
        if config.get("grade") is None:
            config.pop("grade", None)
        config["loss"] = keras.saving.deserialize_keras_object(config["loss"])
        config["teachers"] = [
            keras.saving.deserialize_keras_object(t) for t in config["teachers"]
        ]
        return cls(**config)
