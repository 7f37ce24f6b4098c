"""`Distiller`: train a student from one or many frozen teachers."""

import keras
from keras import ops

from keras_edu.curriculum import CurriculumDataset
from keras_edu.graded_student import GradedStudent
from keras_edu.losses.soft_target_kd import SoftTargetKD
from keras_edu.routing import GradeRouting
from keras_edu.routing import TeacherRouting
from keras_edu.routing import check_curriculum_teachers
from keras_edu.teacher import Teacher
from keras_edu.utils import check_positive
from keras_edu.utils import check_probability
from keras_edu.utils import ends_in_softmax
from keras_edu.utils import input_shape_of
from keras_edu.utils import output_width

_DISTILLATION_LOG_KEYS = ("student_loss", "distillation_loss")


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
        name="distiller",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.alpha = check_probability(alpha, "alpha")
        self.temperature = check_positive(temperature, "temperature")
        self.distillation_term = _resolve_loss(loss, self.temperature)
        self.graded_student = student if isinstance(student, GradedStudent) else None
        if self.graded_student is not None:
            self.graded_student.partition._check_grade(grade)
            student = self.graded_student.model_for_grade(grade)
        self.grade = grade if self.graded_student is not None else None
        self._student = _check_student(student)
        self.teachers = _wrap_teachers(teachers)
        self.num_classes = (
            self.graded_student.partition.num_classes
            if self.graded_student is not None
            else _student_width(self._student)
        )
        _check_teachers_match_student(self.teachers, self._student, self.num_classes)
        teacher_classes = [t.classes for t in self.teachers]
        self._routing = TeacherRouting(teacher_classes, self.num_classes)
        if self.graded_student is not None:
            check_curriculum_teachers(self.graded_student.partition, teacher_classes)
            self._grade_routing = GradeRouting(
                self.graded_student.partition, grade, teacher_classes
            )
            self.seen_accuracy_tracker = keras.metrics.Mean(name="seen_accuracy")
        else:
            _check_loss_can_route(self.distillation_term, self._routing)
        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.distillation_loss_tracker = keras.metrics.Mean(
            name="distillation_loss"
        )
        # Set while tracing a step; tells `compute_metrics` whether the step
        # was a training step (which logs the two loss parts) or not.
        self._logging_distillation = False
        # (CurriculumDataset, CallbackList) of the running `fit`, if graded.
        self._fit_context = None
        # Student and teachers arrive built; so is the Distiller (callbacks
        # such as BackupAndRestore need a built model before `fit`).
        self.built = self._student.built

    @property
    def student(self):
        """The student being trained, a plain `keras.Model`."""
        return self._student

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
        return self._student(inputs, training=training)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        if y_pred is None:
            y_pred = self(x, training=training)
        logits = ops.cast(y_pred, "float32")
        self._logging_distillation = bool(training)
        if self.graded_student is not None:
            labels = _sparse_labels(y, self.num_classes)
            columns = ops.take(
                ops.convert_to_tensor(self._grade_routing.label_to_column), labels
            )
            # Validation data may hold classes not seen yet: the loss is the
            # cross-entropy over the examples of seen classes only.
            seen = ops.cast(columns >= 0, "float32")
            cross_entropy = _cross_entropy_on_seen(columns, logits)
            student_loss = _weighted_mean(cross_entropy, sample_weight) * (
                ops.cast(ops.shape(seen)[0], "float32")
                / ops.maximum(ops.sum(seen), 1.0)
            )
        else:
            labels, cross_entropy = _labels_and_cross_entropy(y, logits)
            student_loss = _weighted_mean(cross_entropy, sample_weight)
        if not training:
            return self._add_regularization(student_loss)

        if self.graded_student is not None:
            per_example, has_teacher = self._one_teacher_distillation(
                x, labels, logits
            )
        else:
            per_example, has_teacher = self._routed_distillation(
                labels, logits, self.teacher_logits(x)
            )
        if sample_weight is not None:
            per_example = per_example * ops.cast(
                ops.reshape(sample_weight, (-1,)), "float32"
            )
        distillation_loss = ops.sum(per_example) / ops.maximum(
            ops.sum(has_teacher), 1.0
        )
        total = self.alpha * student_loss + (1.0 - self.alpha) * distillation_loss
        batch_size = ops.shape(logits)[0]
        self.student_loss_tracker.update_state(student_loss, batch_size)
        self.distillation_loss_tracker.update_state(distillation_loss, batch_size)
        return self._add_regularization(total)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if self.graded_student is not None:
            # Metrics see labels as logit positions of this grade; classes
            # not seen yet become -1 and always count as errors, so
            # `accuracy` is over all classes and `seen_accuracy` over the
            # classes seen so far.
            labels = _sparse_labels(y, self.num_classes)
            y = ops.take(
                ops.convert_to_tensor(self._grade_routing.label_to_column), labels
            )
            seen = ops.cast(y >= 0, "float32")
            correct = ops.cast(
                ops.equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), y),
                "float32",
            )
            self.seen_accuracy_tracker.update_state(correct, sample_weight=seen)
        logs = super().compute_metrics(x, y, y_pred, sample_weight)
        if not self._logging_distillation:
            # Evaluation runs no teacher: do not log loss parts it never had.
            for key in _DISTILLATION_LOG_KEYS:
                logs.pop(key, None)
        return logs

    def teacher_logits(self, x):
        """Every teacher's logits on `x`, float32 and without gradient."""
        return [
            ops.stop_gradient(ops.cast(teacher(x), "float32"))
            for teacher in self.teachers
        ]

    def _routed_distillation(self, labels, logits, teacher_logits):
        """Per-example distillation loss and a 0/1 mask of taught examples."""
        routing = self._routing
        if routing.every_group_covers_all and len(routing.groups) == 1:
            # Fast path: one group of generalists teaches every example.
            group = routing.groups[0]
            per_example = self._group_loss(group, logits, teacher_logits)
            return per_example, ops.ones_like(per_example)
        cover = ops.take(ops.convert_to_tensor(routing.cover_table), labels, axis=0)
        total = 0.0
        for g, group in enumerate(routing.groups):
            total = total + cover[:, g] * self._group_loss(
                group, logits, teacher_logits
            )
        count = ops.sum(cover, axis=1)
        return total / ops.maximum(count, 1.0), ops.minimum(count, 1.0)

    def _one_teacher_distillation(self, x, labels, logits):
        """Per-example loss when every batch is drawn from one group.

        `ops.switch` runs only the branch of the batch's group, so a step
        calls that group's teacher(s) and no other. Examples of another
        group (a mixed batch) get no distillation loss.
        """
        routing = self._grade_routing
        groups = ops.take(ops.convert_to_tensor(routing.group_table), labels)
        batch_group = ops.minimum(groups[0], routing.grade - 1)
        branches = [
            self._make_branch(branch) for branch in routing.branches
        ]
        per_example = ops.switch(batch_group, branches, x, logits)
        taught = ops.cast(ops.equal(groups, batch_group), "float32") * ops.take(
            ops.convert_to_tensor(routing.group_has_teacher), batch_group
        )
        return per_example * taught, taught

    def _make_branch(self, branch):
        def run(x, logits):
            if not branch.members:
                return ops.zeros_like(logits[:, 0])
            targets = [
                ops.take(
                    ops.stop_gradient(ops.cast(self.teachers[k](x), "float32")),
                    columns,
                    axis=1,
                )
                for k, columns in branch.members
            ]
            student_columns = ops.take(logits, branch.student_columns, axis=1)
            return self._term_per_example(targets, student_columns)

        return run

    def _group_loss(self, group, logits, teacher_logits):
        """Per-example loss of one group of teachers over its own classes."""
        student_columns = (
            logits if group.covers_all else ops.take(logits, group.columns, axis=1)
        )
        targets = [
            teacher_logits[k]
            if perm is None
            else ops.take(teacher_logits[k], perm, axis=1)
            for k, perm in group.members
        ]
        return self._term_per_example(targets, student_columns)

    def _term_per_example(self, targets, student_columns):
        """The distillation term of each example against a teacher ensemble."""
        term = self.distillation_term
        if hasattr(term, "per_sample_loss"):
            return term.per_sample_loss(
                targets if len(targets) > 1 else targets[0], student_columns
            )
        # A core Keras term returns a batch scalar; average it over teachers
        # and spread it over the examples (every example is covered here).
        scalar = sum(term.compute_loss(t, student_columns) for t in targets)
        scalar = scalar / len(targets)
        return ops.ones_like(student_columns[:, 0]) * scalar

    def _add_regularization(self, loss):
        # Weight regularizers and `add_loss` terms of the student, as the
        # default `Model.compute_loss` adds them.
        for extra in self.losses:
            loss = loss + ops.cast(ops.sum(extra), "float32")
        return loss

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
        self, grade, optimizer_state="reset", init_new_head_from_old=False
    ):
        """Moves a graded student to `grade` (normally `GradeCallback`'s job).

        Builds the grade's student from the shared stages, so surviving
        layers keep their trained weights; the new stage and block are as
        initialised and the previous block is dropped. The optimizer is
        rebuilt for the new variables (its iteration count and learning rate
        carry over, so schedules continue), and the train, test and predict
        functions are rebuilt.

        Args:
            grade: The grade to move to (1-based).
            optimizer_state: `"reset"` (new slots, as the reference code) or
                `"carry"` (keep the slots, e.g. momentum, of variables that
                survive).
            init_new_head_from_old: Copy the classifier rows of the classes
                the old block already predicted into the new block when
                their shapes allow.
        """
        if self.graded_student is None:
            raise ValueError(
                "`set_grade` needs a Distiller whose student is a "
                "`keras_edu.GradedStudent`."
            )
        if optimizer_state not in ("reset", "carry"):
            raise ValueError(
                "`optimizer_state` must be 'reset' or 'carry'. Received: "
                f"optimizer_state={optimizer_state!r}."
            )
        self.graded_student.partition._check_grade(grade)
        if grade == self.grade:
            return
        old_student, old_grade = self._student, self.grade
        new_student = self.graded_student.model_for_grade(grade)
        if init_new_head_from_old:
            _copy_seen_class_rows(
                self.graded_student, old_grade, grade, old_student, new_student
            )
        self._replace_student(new_student)
        self.grade = grade
        self._grade_routing = GradeRouting(
            self.graded_student.partition, grade, [t.classes for t in self.teachers]
        )
        if getattr(self, "optimizer", None) is not None:
            self._rebuild_optimizer(carry=optimizer_state == "carry")
        if self.compiled:
            self.make_train_function(force=True)
            self.make_test_function(force=True)
            self.make_predict_function(force=True)
        if self._fit_context is not None:
            data, callbacks = self._fit_context
            data.set_grade(grade)
            callbacks.set_params(dict(callbacks.params, steps=len(data)))

    def _replace_student(self, new_student):
        # A built layer refuses new sub-layers and would keep tracking the
        # old student's variables: untrack the old one and track the new one
        # in its place.
        locked = self._tracker.locked
        self._tracker.unlock()
        try:
            self._tracker.untrack(self._student)
            self._student = new_student
        finally:
            if locked:
                self._tracker.lock()
        if keras.backend.backend() == "torch":
            # `zero_grad()` walks the torch parameters registered at build
            # time; register the new student's variables there.
            self._track_variables()

    def _rebuild_optimizer(self, carry):
        old = self.optimizer
        new = keras.optimizers.deserialize(keras.optimizers.serialize(old))
        # Build now: the JAX trainer reads the optimizer's variables when
        # the next epoch starts.
        new.build(self.trainable_variables)
        new.iterations.assign(old.iterations)
        inner = getattr(old, "inner_optimizer", old)
        if not isinstance(
            inner._learning_rate, keras.optimizers.schedules.LearningRateSchedule
        ):
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
        self.optimizer = new

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
        `CurriculumDataset`: only groups `1..grade`, one group per batch.
        Pass a `keras_edu.GradeCallback` to grow the student during the run.
        """
        if self.graded_student is None:
            return super().fit(
                x, y, batch_size=batch_size, epochs=epochs, verbose=verbose,
                callbacks=callbacks, shuffle=shuffle,
                initial_epoch=initial_epoch, **kwargs,
            )
        from keras_edu.grade_callback import GradeCallback

        callbacks = list(callbacks or [])
        schedule = next((c for c in callbacks if isinstance(c, GradeCallback)), None)
        if schedule is not None:
            schedule.validate(self, epochs)
            # Resume in the right grade *before* BackupAndRestore loads the
            # weights of that grade's student.
            start = _resumed_epoch(callbacks, initial_epoch)
            self.set_grade(
                schedule.grade_at(start),
                optimizer_state=schedule.optimizer_state,
            )
        data = self._curriculum_dataset(x, y, batch_size, shuffle, schedule)
        verbose = 1 if verbose == "auto" else verbose
        callback_list = keras.callbacks.CallbackList(
            callbacks,
            add_history=True,
            add_progbar=verbose != 0,
            verbose=verbose,
            epochs=epochs,
            steps=len(data),
            model=self,
        )
        self._fit_context = (data, callback_list)
        try:
            return super().fit(
                data, epochs=epochs, verbose=verbose, callbacks=callback_list,
                shuffle=False, initial_epoch=initial_epoch, **kwargs,
            )
        finally:
            self._fit_context = None

    def _curriculum_dataset(self, x, y, batch_size, shuffle, schedule):
        if isinstance(x, CurriculumDataset):
            if x.partition != self.graded_student.partition:
                raise ValueError(
                    "The CurriculumDataset's partition differs from the "
                    "student's. Build it with `partition=` the student's."
                )
            x.set_grade(self.grade)
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
            partition=self.graded_student.partition,
            batch_size=batch_size or 32,
            order=schedule.order if schedule else "interleaved",
            shuffle=shuffle,
            seed=schedule.seed if schedule else None,
            grade=self.grade,
        )

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


def _resolve_loss(loss, temperature):
    if loss is None:
        return SoftTargetKD(temperature=temperature)
    if not isinstance(loss, keras.distillation.DistillationLoss):
        raise ValueError(
            "`loss` must be a `keras.distillation.DistillationLoss`, such as "
            "`keras_edu.losses.SoftTargetKD()`, or None for Hinton KD. "
            f"Received: loss={loss!r}."
        )
    if getattr(loss, "temperature", 0) is None:
        loss.temperature = temperature
    return loss


def _check_student(student):
    if not isinstance(student, keras.Model):
        raise ValueError(
            "`student` must be a `keras.Model` that outputs logits. "
            f"Received: student={student!r}."
        )
    if ends_in_softmax(student):
        raise ValueError(
            f"The student '{student.name}' ends in a softmax; the Distiller "
            "needs logits. Remove the final softmax activation (use "
            "`activation=None` in the last layer)."
        )
    return student


def _student_width(student):
    width = output_width(student)
    if width is None:
        raise ValueError(
            f"Cannot tell how many classes the student '{student.name}' "
            "predicts: its output shape is unknown. Build it first (call it "
            "on a batch) or use a functional model."
        )
    return width


def _wrap_teachers(teachers):
    if isinstance(teachers, (keras.Model, Teacher)):
        teachers = [teachers]
    if not teachers:
        raise ValueError(
            "`teachers` must list at least one teacher: a `keras_edu.Teacher` "
            f"or a trained `keras.Model`. Received: teachers={teachers!r}."
        )
    wrapped = []
    for index, teacher in enumerate(teachers):
        if isinstance(teacher, keras.Model):
            teacher = Teacher(teacher)
        if not isinstance(teacher, Teacher):
            raise ValueError(
                f"`teachers[{index}]` must be a `keras_edu.Teacher` or a "
                f"`keras.Model`. Received: {teacher!r}."
            )
        if ends_in_softmax(teacher.model):
            raise ValueError(
                f"`teachers[{index}]` ('{teacher.model.name}') ends in a "
                "softmax; teachers must output logits. Remove the final "
                "softmax activation."
            )
        wrapped.append(teacher)
    return wrapped


def _check_teachers_match_student(teachers, student, num_classes):
    student_shape = input_shape_of(student)
    for index, teacher in enumerate(teachers):
        too_large = [c for c in teacher.classes if c >= num_classes]
        if too_large:
            raise ValueError(
                f"`teachers[{index}]` covers class ids {too_large}, but the "
                f"student only predicts {num_classes} classes (ids 0 to "
                f"{num_classes - 1}). Fix the teacher's `classes` or widen "
                "the student's output layer."
            )
        teacher_shape = input_shape_of(teacher.model)
        if not _shapes_compatible(teacher_shape, student_shape):
            raise ValueError(
                f"`teachers[{index}]` takes inputs of shape {teacher_shape} "
                f"but the student takes {student_shape}; both see the same "
                "batches. Build them for the same input shape (resize inside "
                "the teacher with a `keras.layers.Resizing` layer if needed)."
            )


def _shapes_compatible(a, b):
    if a is None or b is None:
        return True
    if len(a) != len(b):
        return False
    return all(x is None or y is None or x == y for x, y in zip(a, b))


def _check_loss_can_route(term, routing):
    if hasattr(term, "per_sample_loss") or routing.every_group_covers_all:
        return
    raise ValueError(
        f"`loss` ({type(term).__name__}) only returns a batch scalar, so it "
        "cannot be routed to specialist teachers that cover some classes. "
        "Give it a `per_sample_loss(teacher_outputs, student_outputs)` "
        "method returning one value per example, or use teachers of all "
        "classes."
    )


def _labels_and_cross_entropy(y, logits):
    """Integer labels and per-example cross-entropy, for sparse or dense `y`."""
    num_classes = logits.shape[-1]
    if len(y.shape) == 2 and y.shape[-1] == num_classes and num_classes > 1:
        # One-hot or soft labels (MixUp, CutMix, label smoothing): route on
        # the most likely class, learn from the full distribution.
        dense = ops.cast(y, "float32")
        labels = ops.cast(ops.argmax(dense, axis=-1), "int32")
        cross_entropy = ops.categorical_crossentropy(dense, logits, from_logits=True)
        return labels, cross_entropy
    labels = ops.cast(ops.reshape(y, (-1,)), "int32")
    cross_entropy = ops.sparse_categorical_crossentropy(
        labels, logits, from_logits=True
    )
    return labels, cross_entropy


def _weighted_mean(values, sample_weight):
    # Keras's "sum_over_batch_size": weighted sum over the batch size.
    if sample_weight is None:
        return ops.mean(values)
    weights = ops.cast(ops.reshape(sample_weight, (-1,)), "float32")
    return ops.sum(values * weights) / ops.cast(ops.shape(values)[0], "float32")


def _sparse_labels(y, num_classes):
    """Integer class ids from sparse `(B,)`, `(B, 1)` or one-hot labels."""
    if len(y.shape) == 2 and y.shape[-1] == num_classes and num_classes > 1:
        return ops.cast(ops.argmax(y, axis=-1), "int32")
    return ops.cast(ops.reshape(y, (-1,)), "int32")


def _cross_entropy_on_seen(columns, logits):
    """Cross-entropy at logit positions; positions -1 (unseen) give 0."""
    seen = ops.cast(columns >= 0, "float32")
    cross_entropy = ops.sparse_categorical_crossentropy(
        ops.maximum(columns, 0), logits, from_logits=True
    )
    return cross_entropy * seen


def _resumed_epoch(callbacks, initial_epoch):
    """The epoch a `BackupAndRestore` in `callbacks` will resume from."""
    import json
    import os

    for callback in callbacks:
        if isinstance(callback, keras.callbacks.BackupAndRestore):
            path = callback._training_metadata_path
            if os.path.exists(path):
                # Keras records the epoch training resumes at.
                with open(path) as f:
                    return json.load(f)["epoch"]
    return initial_epoch


def _final_dense(block):
    if isinstance(block, keras.layers.Dense):
        return block
    if hasattr(block, "dense"):
        return block.dense
    dense = [l for l in getattr(block, "layers", []) if isinstance(l, keras.layers.Dense)]
    return dense[-1] if dense else None


def _copy_seen_class_rows(graded, old_grade, new_grade, old_model, new_model):
    """Initialise the new classifier's seen-class rows from the old one."""
    old_dense = _final_dense(graded._blocks()[old_grade - 1])
    new_dense = _final_dense(graded._blocks()[new_grade - 1])
    if old_dense is None or new_dense is None:
        return
    old_kernel = ops.convert_to_numpy(old_dense.kernel)
    new_kernel = ops.convert_to_numpy(new_dense.kernel)
    if old_kernel.shape[0] != new_kernel.shape[0]:
        return
    old_classes = graded.classes_for_grade(old_grade)
    new_position = {c: i for i, c in enumerate(graded.classes_for_grade(new_grade))}
    targets = [new_position[c] for c in old_classes]
    new_kernel[:, targets] = old_kernel
    new_dense.kernel.assign(new_kernel)
    if old_dense.use_bias and new_dense.use_bias:
        new_bias = ops.convert_to_numpy(new_dense.bias)
        new_bias[targets] = ops.convert_to_numpy(old_dense.bias)
        new_dense.bias.assign(new_bias)
