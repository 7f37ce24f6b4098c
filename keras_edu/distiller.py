"""`Distiller`: train a student from one or many frozen teachers."""

import keras
from keras import ops

from keras_edu.losses.soft_target_kd import SoftTargetKD
from keras_edu.routing import TeacherRouting
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
        name="distiller",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.alpha = check_probability(alpha, "alpha")
        self.temperature = check_positive(temperature, "temperature")
        self.distillation_term = _resolve_loss(loss, self.temperature)
        self._student = _check_student(student)
        self.teachers = _wrap_teachers(teachers)
        self.num_classes = _student_width(self._student)
        _check_teachers_match_student(self.teachers, self._student, self.num_classes)
        self._routing = TeacherRouting(
            [t.classes for t in self.teachers], self.num_classes
        )
        _check_loss_can_route(self.distillation_term, self._routing)
        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.distillation_loss_tracker = keras.metrics.Mean(
            name="distillation_loss"
        )
        # Set while tracing a step; tells `compute_metrics` whether the step
        # was a training step (which logs the two loss parts) or not.
        self._logging_distillation = False

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

    def call(self, inputs, training=None):
        return self._student(inputs, training=training)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        if y_pred is None:
            y_pred = self(x, training=training)
        logits = ops.cast(y_pred, "float32")
        labels, cross_entropy = _labels_and_cross_entropy(y, logits)
        student_loss = _weighted_mean(cross_entropy, sample_weight)
        self._logging_distillation = bool(training)
        if not training:
            return self._add_regularization(student_loss)

        teacher_logits = self.teacher_logits(x)
        per_example, has_teacher = self._routed_distillation(
            labels, logits, teacher_logits
        )
        if sample_weight is not None:
            per_example = per_example * ops.cast(sample_weight, "float32")
        distillation_loss = ops.sum(per_example) / ops.maximum(
            ops.sum(has_teacher), 1.0
        )
        total = self.alpha * student_loss + (1.0 - self.alpha) * distillation_loss
        batch_size = ops.shape(logits)[0]
        self.student_loss_tracker.update_state(student_loss, batch_size)
        self.distillation_loss_tracker.update_state(distillation_loss, batch_size)
        return self._add_regularization(total)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
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

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "student": keras.saving.serialize_keras_object(self._student),
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
        for key in ("student", "loss"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
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
