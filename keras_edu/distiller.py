"""`Distiller`: train a student from one or many frozen teachers."""

import keras
import numpy as np
from keras import ops

from keras_edu import growth
from keras_edu import nonfinite
from keras_edu import teacher_cache
from keras_edu.curriculum import DEFAULT_ORDER
from keras_edu.curriculum import CurriculumDataset
from keras_edu.feature_taps import FeatureTaps
from keras_edu.feature_taps import last_feature_layer
from keras_edu.graded_student import GradedStudent
from keras_edu.label_checks import BadLabelCount
from keras_edu.label_checks import StopOnBadLabels
from keras_edu.label_checks import check_input_array
from keras_edu.label_checks import check_labels
from keras_edu.losses.amtml import AMTML
from keras_edu.losses.soft_target_kd import SoftTargetKD
from keras_edu.routing import GradeRouting
from keras_edu.routing import GroupBranch
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
            directory, for data whose outputs do not fit in memory. Needs
            `x` as a NumPy array (a dataset may augment, so its samples
            have no fixed outputs); computed again by each `fit` call. See
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
        if generalists_teach not in ("auto", "group", "seen"):
            raise ValueError(
                "`generalists_teach` must be 'auto', 'group' or 'seen'. "
                f"Received: generalists_teach={generalists_teach!r}."
            )
        self.cache_teachers = teacher_cache.check_cache_setting(cache_teachers)
        # Seconds the last `fit` spent filling the teacher cache.
        self.teacher_cache_seconds = None
        self.alpha = check_probability(alpha, "alpha")
        self.temperature = check_positive(temperature, "temperature")
        self.distillation_term = _resolve_loss(loss, self.temperature)
        if generalists_teach == "auto":
            # Measured best for SoftTargetKD (docs/results.md); AMTML mixes
            # the generalists into each group instead.
            amtml = isinstance(self.distillation_term, AMTML)
            generalists_teach = "group" if amtml else "seen"
        self.generalists_teach = generalists_teach
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
        self.specialists_until_grade = self._check_specialists_until_grade(
            specialists_until_grade
        )
        if self.graded_student is not None:
            check_curriculum_teachers(self.graded_student.partition, teacher_classes)
            self._grade_routing = self._route_grade(grade)
            self.seen_accuracy_tracker = keras.metrics.Mean(name="seen_accuracy")
        else:
            _check_loss_can_route(self.distillation_term, self._routing)
            # Labels that arrive batch by batch are counted in the step;
            # `fit` raises at the end of the first epoch that saw a bad one.
            self.label_check = BadLabelCount(self.num_classes)
        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.distillation_loss_tracker = keras.metrics.Mean(
            name="distillation_loss"
        )
        # AMTML: the loss owns no state; the Distiller tracks (so trains and
        # saves) the layers it makes, outside the student.
        self.teacher_importance = None
        self.hint_regressors = []
        self._amtml = None
        if isinstance(self.distillation_term, AMTML):
            if (
                self.graded_student is not None
                and self._grade_routing.seen_branch is not None
            ):
                raise ValueError(
                    "`generalists_teach='seen'` is not supported with an AMTML "
                    "loss; use generalists_teach='group' (AMTML then mixes the "
                    "generalists with each group's specialists)."
                )
            self._amtml = _AMTMLWiring(self)
            self.amtml_loss_trackers = {
                key: keras.metrics.Mean(name=key)
                for key in self.distillation_term.log_names
            }
            self.teacher_weight_trackers = [
                keras.metrics.Mean(name=f"teacher_{k}_weight")
                for k in range(len(self.teachers))
            ]
            self._amtml.refresh()
        # Set while tracing a step; tells `compute_metrics` whether the step
        # was a training step (which logs the two loss parts) or not.
        self._logging_distillation = False
        # (CurriculumDataset, CallbackList) of the running `fit`, if graded.
        self._fit_context = None
        # Rows per group of a stratified curriculum batch, during `fit`.
        self._blocks = None
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
        return None if self._fit_context is None else self._fit_context[0]

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
        inputs = teacher_cache.inputs_of(inputs)
        if training and self._amtml is not None:
            # One student forward gives the logits and the tapped feature
            # maps AMTML needs: {"logits": z, "features": {layer: map}}.
            logits, features = self._amtml.student_taps(inputs, training=True)
            return {"logits": logits, "features": features}
        return self._student(inputs, training=training)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        if y_pred is None:
            y_pred = self(x, training=training)
        features = None
        if isinstance(y_pred, dict):
            features, y_pred = y_pred["features"], y_pred["logits"]
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
            if training:
                self.label_check.update_state(y)
            labels, cross_entropy = _labels_and_cross_entropy(y, logits)
            student_loss = _weighted_mean(cross_entropy, sample_weight)
        if not training:
            return self._add_regularization(student_loss)
        if self._amtml is not None:
            if features is None:
                # Logits given without features (a call by hand): read the
                # features from an inference-mode pass of the tap model.
                _, features = self._amtml.student_taps(
                    teacher_cache.inputs_of(x), training=False
                )
            return self._add_regularization(
                self._amtml_loss(
                    x, labels, logits, features, student_loss, sample_weight
                )
            )

        if self.graded_student is not None and self._blocks is not None:
            per_example, has_teacher = self._blockwise_distillation(
                x, labels, logits
            )
        elif self.graded_student is not None:
            per_example, has_teacher = self._one_teacher_distillation(
                x, labels, logits
            )
        elif self._distil_on_subsets():
            per_example, has_teacher = self._routed_distillation_on_subsets(
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
        if isinstance(y_pred, dict):
            y_pred = y_pred["logits"]  # training with AMTML feature taps
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
        if self._amtml is not None:
            # AMTML logs its KD term as `kd_loss`, beside its other terms.
            logs.pop("distillation_loss", None)
        logs.pop("bad_labels", None)  # read by StopOnBadLabels, not logged
        if not self._logging_distillation:
            # Evaluation runs no teacher: do not log loss parts it never had.
            for key in self._distillation_log_keys():
                logs.pop(key, None)
        return logs

    def _distillation_log_keys(self):
        keys = list(_DISTILLATION_LOG_KEYS)
        if self._amtml is not None:
            keys += list(self.amtml_loss_trackers)
            keys += [t.name for t in self.teacher_weight_trackers]
        return keys

    def teacher_logits(self, x):
        """Every teacher's logits on `x`, float32 and without gradient."""
        return [self._teacher_output(k, x) for k in range(len(self.teachers))]

    def _teacher_output(self, k, x):
        """Teacher k's float32 logits on a batch: cached, or run now."""
        cached = teacher_cache.outputs_of(x, k)
        if cached is not None:
            return ops.cast(cached["logits"], "float32")
        return ops.stop_gradient(ops.cast(self.teachers[k](x), "float32"))

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
        if self._amtml is None:
            raise ValueError(
                "`teacher_weights` needs a Distiller built with "
                "`loss=keras_edu.losses.AMTML(...)`: other losses learn no "
                "per-example teacher weights."
            )
        if self.graded_student is not None:
            raise ValueError(
                "`teacher_weights` supports a plain student only: in "
                "education distillation each group mixes its own teachers, "
                "so the weights of an example depend on its label. Read "
                "the `teacher_{k}_weight` logs of `fit` instead."
            )
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(
                "`batch_size` must be a positive integer. Received: "
                f"batch_size={batch_size!r}."
            )
        rows = []
        for start in range(0, len(x), batch_size):
            _, features = self._amtml.student_taps(
                x[start : start + batch_size], training=False
            )
            weights = self.teacher_importance(features[self._amtml.beta])
            rows.append(ops.convert_to_numpy(ops.cast(weights, "float32")))
        return np.concatenate(rows, axis=0)

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

    def _distil_on_subsets(self):
        """Whether to run each teacher group on its own examples only.

        Only in eager PyTorch, which allows the data-dependent batch sizes,
        and only when some group covers part of the classes (generalists see
        every example anyway).
        """
        return (
            keras.backend.backend() == "torch"
            and not self.jit_compile
            and not self._routing.every_group_covers_all
        )

    def _routed_distillation_on_subsets(self, x, labels, logits):
        """`_routed_distillation` that runs a teacher only where it teaches.

        Same per-example losses and mask as the dense path, but each group
        of teachers sees only the examples whose label it covers, so K
        specialists over disjoint classes cost about one teacher pass per
        batch instead of K. PyTorch only (see `_distil_on_subsets`).
        """
        import torch

        routing = self._routing
        cover = ops.take(ops.convert_to_tensor(routing.cover_table), labels, axis=0)
        total = ops.zeros_like(logits[:, 0])
        for g, group in enumerate(routing.groups):
            index = torch.nonzero(cover[:, g]).squeeze(1)
            if index.numel() == 0:
                continue
            rows = keras.tree.map_structure(lambda t, i=index: t[i], x)
            with torch.no_grad():
                outputs = {
                    k: self._teacher_output(k, rows) for k, _ in group.members
                }
            targets = [
                outputs[k] if perm is None else ops.take(outputs[k], perm, axis=1)
                for k, perm in group.members
            ]
            student_rows = logits[index]
            if not group.covers_all:
                student_rows = ops.take(student_rows, group.columns, axis=1)
            total = total.index_add(
                0, index, self._term_per_example(targets, student_rows)
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
        return self._with_seen_class_teachers(x, logits, per_example * taught, taught)

    def _blockwise_distillation(self, x, labels, logits):
        """Per-example loss when batches are stratified by group.

        The curriculum lays a batch out in contiguous blocks, one per seen
        group (`CurriculumDataset.block_sizes()`), so each group's
        teacher(s) run on that group's rows only: the step costs one teacher
        pass over the batch, whatever the number of groups. Rows whose label
        is not in their block's group get no distillation loss.
        """
        routing = self._grade_routing
        groups = ops.take(ops.convert_to_tensor(routing.group_table), labels)
        per_example, taught, start = [], [], 0
        for group, size in enumerate(self._blocks):
            stop = start + size
            rows = keras.tree.map_structure(lambda t: t[start:stop], x)
            run = self._make_branch(routing.branches[group])
            per_example.append(run(rows, logits[start:stop]))
            taught.append(
                ops.cast(ops.equal(groups[start:stop], group), "float32")
                * float(routing.group_has_teacher[group])
            )
            start = stop
        taught = ops.concatenate(taught, axis=0)
        per_example = ops.concatenate(per_example, axis=0) * taught
        return self._with_seen_class_teachers(x, logits, per_example, taught)

    def _route_grade(self, grade):
        teacher_classes = [t.classes for t in self.teachers]
        generalists = self._generalists()
        seen_teachers = generalists if self.generalists_teach == "seen" else []
        retired = []
        until = self.specialists_until_grade
        if until is not None and grade > until:
            retired = [k for k in range(len(teacher_classes)) if k not in generalists]
        return GradeRouting(
            self.graded_student.partition,
            grade,
            teacher_classes,
            seen_teachers,
            retired_teachers=retired,
        )

    def _default_specialists_until_grade(self):
        """The last grade but one when a generalist teaches the seen classes.

        Measured best (docs/results.md): in the last grade the full network
        sees every class and the generalists cover them all, so the
        specialists only add a teacher pass per example. Otherwise None.
        """
        if (
            self.graded_student is None
            or self.generalists_teach != "seen"
            or not self._generalists()
            or self.graded_student.partition.num_groups < 2
        ):
            return None
        return self.graded_student.partition.num_groups - 1

    def _generalists(self):
        """Indices of the teachers that cover every class."""
        every_class = set(range(self.num_classes))
        return [
            k for k, t in enumerate(self.teachers) if set(t.classes) == every_class
        ]

    def _check_specialists_until_grade(self, value):
        if value == "auto":
            return self._default_specialists_until_grade()
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(
                "`specialists_until_grade` must be `None` or a grade >= 1. "
                f"Received: specialists_until_grade={value!r}."
            )
        if self.graded_student is None:
            raise ValueError(
                "`specialists_until_grade` needs a student that grows in grades "
                "(a `keras_edu.GradedStudent`); a plain student has no grades. "
                f"Received: specialists_until_grade={value!r}."
            )
        if value < self.graded_student.partition.num_groups and not self._generalists():
            raise ValueError(
                f"`specialists_until_grade={value}` leaves grades "
                f"{value + 1}..{self.graded_student.partition.num_groups} with no "
                "teacher: it retires the specialists, and no teacher covers every "
                "class. Add a generalist teacher or pass "
                "`specialists_until_grade=None`."
            )
        if isinstance(self.distillation_term, AMTML):
            raise ValueError(
                "`specialists_until_grade` is not supported with an AMTML loss "
                "(AMTML mixes each group's specialists with the generalists). "
                "Pass `specialists_until_grade=None`."
            )
        return int(value)

    def _with_seen_class_teachers(self, x, logits, per_example, taught):
        """Adds the generalists' term over all seen classes (`"seen"`).

        Every example is taught by them; an example its group also teaches
        gets the mean of both terms.
        """
        branch = self._grade_routing.seen_branch
        if branch is None:
            return per_example, taught
        seen_term = self._make_branch(branch)(x, logits)
        return (per_example + seen_term) / (taught + 1.0), ops.ones_like(taught)

    def _make_branch(self, branch):
        def run(x, logits):
            if not branch.members:
                return ops.zeros_like(logits[:, 0])
            targets = [
                ops.take(self._teacher_output(k, x), columns, axis=1)
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

    def _amtml_loss(self, x, labels, logits, features, student_loss, sample_weight):
        """The training loss with a `keras_edu.losses.AMTML` term.

        `alpha * CE + (1 - alpha) * KD + hint + angle [+ distance] + L2`:
        only the KD term is scaled by `1 - alpha` (METHOD.md, section 2).
        KD and hints are averaged over the taught rows; the relational
        terms are batch scalars (over each group's rows in a curriculum).
        """
        amtml, wiring = self.distillation_term, self._amtml
        if self.graded_student is None:
            terms = wiring.branch(wiring.plain_branch)(x, logits, features)
            taught = ops.ones_like(logits[:, 0])
        elif self._blocks is not None:
            terms, taught = self._amtml_blockwise(x, labels, logits, features)
        else:
            terms, taught = self._amtml_one_group(x, labels, logits, features)
        weight = taught
        if sample_weight is not None:
            weight = taught * ops.cast(ops.reshape(sample_weight, (-1,)), "float32")
        count = ops.maximum(ops.sum(taught), 1.0)
        values = {
            "kd_loss": ops.sum(terms["kd"] * weight) / count,
            "hint_loss": ops.sum(terms["hint"] * weight) / count,
            "angle_loss": terms["angle"],
            "distance_loss": terms["distance"],
            "l2_loss": amtml.l2_penalty(self.teacher_importance),
        }
        total = (
            self.alpha * student_loss
            + (1.0 - self.alpha) * values["kd_loss"]
            + amtml.hint_weight * values["hint_loss"]
            + amtml.angle_weight * values["angle_loss"]
            + amtml.distance_weight * values["distance_loss"]
            + values["l2_loss"]
        )
        if self.graded_student is not None:
            # A step of a group whose teachers give no hint leaves some
            # active regressors out of the graph (PyTorch runs one branch
            # of `ops.switch`); a zero term gives them a zero gradient
            # instead of none, which optimizers warn about.
            for regressor in self.hint_regressors:
                total = total + 0.0 * ops.sum(regressor.kernel)
        batch_size = ops.shape(logits)[0]
        self.student_loss_tracker.update_state(student_loss, batch_size)
        for key, tracker in self.amtml_loss_trackers.items():
            tracker.update_state(values[key], batch_size)
        # Teacher k's mean weight over the rows it teaches.
        teaches = ops.expand_dims(taught, 1) * terms["teaches"]
        for k, tracker in enumerate(self.teacher_weight_trackers):
            tracker.update_state(terms["weights"][:, k], sample_weight=teaches[:, k])
        return total

    def _amtml_one_group(self, x, labels, logits, features):
        """AMTML terms of a batch drawn from one group (`ops.switch`)."""
        routing = self._grade_routing
        groups = ops.take(ops.convert_to_tensor(routing.group_table), labels)
        batch_group = ops.minimum(groups[0], routing.grade - 1)
        branches = [self._amtml.branch(branch) for branch in routing.branches]
        terms = ops.switch(batch_group, branches, x, logits, features)
        taught = ops.cast(ops.equal(groups, batch_group), "float32") * ops.take(
            ops.convert_to_tensor(routing.group_has_teacher), batch_group
        )
        return terms, taught

    def _amtml_blockwise(self, x, labels, logits, features):
        """AMTML terms of a stratified batch: each group on its own block.

        The relational terms are computed within each block (the rows one
        group's teachers teach) and averaged over the blocks by row count.
        """
        routing = self._grade_routing
        groups = ops.take(ops.convert_to_tensor(routing.group_table), labels)
        parts, taught, start = [], [], 0
        relational = {"angle": 0.0, "distance": 0.0}
        rows_taught = 0.0
        for group, size in enumerate(self._blocks):
            stop = start + size
            run = self._amtml.branch(routing.branches[group])
            def cut(t, start=start, stop=stop):
                return t[start:stop]

            terms = run(
                keras.tree.map_structure(cut, x),
                logits[start:stop],
                keras.tree.map_structure(cut, features),
            )
            parts.append(terms)
            has_teacher = float(routing.group_has_teacher[group])
            for key, value in relational.items():
                relational[key] = value + size * has_teacher * terms[key]
            rows_taught += size * has_teacher
            taught.append(
                ops.cast(ops.equal(groups[start:stop], group), "float32") * has_teacher
            )
            start = stop
        terms = {
            key: ops.concatenate([part[key] for part in parts], axis=0)
            for key in ("kd", "hint", "weights", "teaches")
        }
        for key, value in relational.items():
            terms[key] = value / max(rows_taught, 1.0)
        return terms, ops.concatenate(taught, axis=0)

    def _retrack(self, **attributes):
        """Replaces tracked attributes (layers or lists of layers) in place.

        A built layer refuses new sub-layers and would keep tracking the
        old ones: untrack the old values and track the new ones.
        """
        locked = self._tracker.locked
        self._tracker.unlock()
        try:
            for name, value in attributes.items():
                old = getattr(self, name, None)
                for layer in old if isinstance(old, (list, tuple)) else [old]:
                    if layer is not None:
                        self._tracker.untrack(layer)
                setattr(self, name, value)
        finally:
            if locked:
                self._tracker.lock()
        if keras.backend.backend() == "torch":
            self._track_variables()

    def _add_regularization(self, loss):
        # Weight regularizers and `add_loss` terms of the student, as the
        # default `Model.compute_loss` adds them.
        for extra in self.losses:
            loss = loss + ops.cast(ops.sum(extra), "float32")
        return _scale_for_replicas(loss)

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
            zero_init_residual: Start every residual block of the stages
                the student gains as its shortcut path
                (`keras_edu.growth.zero_init_residual_branches`).
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
        old_grade = self.grade
        new_student = self.graded_student.model_for_grade(grade)
        graded = self.graded_student
        if init_new_head_from_old:
            growth.copy_seen_class_rows(
                graded._blocks()[old_grade - 1],
                graded._blocks()[grade - 1],
                graded.classes_for_grade(old_grade),
                graded.classes_for_grade(grade),
            )
        if zero_init_residual:
            for stage in graded.stages[old_grade:grade]:
                growth.zero_init_residual_branches(stage)
        self._replace_student(new_student)
        self.grade = grade
        self._grade_routing = self._route_grade(grade)
        if self._amtml is not None:
            # A fresh TeacherImportance for the new last stage, the hints
            # that teach at this grade (docs/many_teachers.md).
            self._amtml.refresh()
        if self._fit_context is not None:
            data, callbacks = self._fit_context
            data.set_grade(grade)
            self._blocks = data.block_sizes()
            callbacks.set_params(dict(callbacks.params, steps=len(data)))
        if getattr(self, "optimizer", None) is not None:
            self._rebuild_optimizer(carry=optimizer_state == "carry")
        if self.compiled:
            self.make_train_function(force=True)
            self.make_test_function(force=True)
            self.make_predict_function(force=True)

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

        NumPy (or list) labels are checked before the first step
        (`keras_edu.label_checks.check_labels`): a label outside the
        student's classes, a non-integer sparse label or a one-hot row that
        is not a distribution raises a ValueError naming `y`. A NumPy `x`
        whose dtype, example shape or length does not fit the student and
        `y` raises one naming `x`
        (`keras_edu.label_checks.check_input_array`); NumPy inputs with NaN
        or Inf, and a teacher whose logits on the first batch are
        not finite, raise a ValueError naming `x` or the teacher
        (`keras_edu.nonfinite`).
        """
        _check_devices_are_supported(self.graded_student is not None)
        if isinstance(y, (np.ndarray, list)):
            check_labels(y, self.num_classes)
        check_input_array(x, input_shape_of(self._student), y)
        self._check_finite_before_training(x, batch_size)
        if self.cache_teachers:
            x = self._with_cached_teacher_outputs(x)
        if self.graded_student is None:
            callbacks = list(callbacks or []) + [StopOnBadLabels(self.label_check)]
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
            # Take the grade of the weights BackupAndRestore will load
            # *before* it loads them. A backup written at the end of the
            # epoch before a boundary holds the old grade's student: resume
            # there, and the callback then grows it at the boundary exactly
            # as an uninterrupted run does.
            self.set_grade(
                schedule.grade_at(_backup_epoch(callbacks, initial_epoch)),
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
        self._blocks = data.block_sizes()
        try:
            return super().fit(
                data, epochs=epochs, verbose=verbose, callbacks=callback_list,
                shuffle=False, initial_epoch=initial_epoch, **kwargs,
            )
        finally:
            self._fit_context = None
            self._blocks = None

    def _with_cached_teacher_outputs(self, x):
        """`x` with each sample's teacher outputs, computed once now."""
        teacher_cache.check_cacheable(x)
        forwards = [self._cache_forward(k) for k in range(len(self.teachers))]
        directory = None if self.cache_teachers is True else self.cache_teachers
        outputs, self.teacher_cache_seconds = teacher_cache.fill(
            forwards, x, directory
        )
        return teacher_cache.attach(x, outputs)

    def _cache_forward(self, k):
        forward = self._amtml.cache_forward(k) if self._amtml else None
        if forward is not None:
            return forward
        model = self.teachers[k].model
        return lambda batch: {
            "logits": np.asarray(model.predict_on_batch(batch), "float32")
        }

    def _check_finite_before_training(self, x, batch_size):
        # A NaN pixel or a teacher trained into NaN would make every loss
        # NaN while training goes on: say which, before the first step.
        nonfinite.check_finite_inputs(x)
        inputs = nonfinite.first_batch_inputs(x, batch_size)
        if inputs is None:
            return
        inputs = np.asarray(inputs)
        shape = input_shape_of(self._student)
        if shape is not None and inputs.ndim == len(shape):
            inputs = inputs[None]  # one example of an unbatched dataset
        nonfinite.check_finite_inputs(inputs, name="x (its first batch)")
        nonfinite.check_teachers_finite(self.teachers, inputs)

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
            order=schedule.order if schedule else DEFAULT_ORDER,
            shuffle=shuffle,
            seed=schedule.seed if schedule else None,
            grade=self.grade,
            **_jax_process_share(),
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
    # An out-of-range label would stop TensorFlow and PyTorch with an
    # internal error (JAX clamps it): BadLabelCount has counted it and fit
    # raises a clear error at the epoch's end, so the step uses class 0.
    valid = ops.logical_and(ops.greater_equal(labels, 0), ops.less(labels, num_classes))
    labels = ops.where(valid, labels, ops.zeros_like(labels))
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


def _backup_epoch(callbacks, initial_epoch):
    """The epoch whose student a `BackupAndRestore` in `callbacks` holds.

    Keras records the epoch training resumes at and the batches of it
    already seen: 0 when the backup was written at the end of the epoch
    before (whose student it then holds), more when written inside it.
    Without a backup, `initial_epoch`.
    """
    import json
    import os

    for callback in callbacks:
        if isinstance(callback, keras.callbacks.BackupAndRestore):
            path = callback._training_metadata_path
            if os.path.exists(path):
                with open(path) as f:
                    metadata = json.load(f)
                epoch = metadata["epoch"]
                inside = metadata.get("batch", 0) > 0
                return epoch if inside or epoch == 0 else epoch - 1
    return initial_epoch


class _AMTMLWiring:
    """What a Distiller needs to run `keras_edu.losses.AMTML`.

    Holds the feature taps (one tap model for the student, one per teacher
    that gives hints), every hint regressor made so far, and which hints
    teach at the current grade. A plain object on purpose: the Distiller
    tracks the `TeacherImportance` layer and the active regressors itself,
    and must not track the tap models, whose weights are the student's and
    the teachers'.
    """

    def __init__(self, distiller):
        self.distiller = distiller
        self.loss = loss = distiller.distillation_term
        teachers = distiller.teachers
        for index, (_, k, _) in enumerate(loss.hints):
            if k >= len(teachers):
                raise ValueError(
                    f"hints[{index}] names teachers[{k}], but the Distiller "
                    f"has {len(teachers)} teacher(s)."
                )
        hinted = {}
        for student_layer, k, teacher_layer in loss.hints:
            hinted.setdefault(k, []).append(teacher_layer)
        self.teacher_taps = [
            FeatureTaps(t.model, hinted[k], role=f"teachers[{k}]")
            if k in hinted
            else None
            for k, t in enumerate(teachers)
        ]
        # Hint index -> HintRegressor; kept when the student grows, since
        # the stage it reads survives.
        self.regressors = {}
        self.plain_branch = None
        graded = distiller.graded_student
        if graded is None:
            routing = distiller._routing
            if not (routing.every_group_covers_all and len(routing.groups) == 1):
                raise ValueError(
                    "AMTML mixes teachers of the same classes: every teacher "
                    "must cover all the student's classes (generalists). "
                    f"Received teachers covering {[t.classes for t in teachers]}. "
                    "For specialists of class groups, use a "
                    "`keras_edu.GradedStudent` curriculum (a group covered by "
                    "several teachers is taught by AMTML) or the default "
                    "`SoftTargetKD`."
                )
            group = routing.groups[0]
            self.plain_branch = GroupBranch(group.columns, group.members)
            self.plain_branch.student_columns = None  # all, in order
            return
        if loss.feature_layer is not None:
            raise ValueError(
                "With a `keras_edu.GradedStudent`, `AMTML(feature_layer=...)` "
                "must be None: beta is the output of the grade's last stage. "
                f"Received: feature_layer={loss.feature_layer!r}."
            )
        # Every hint reads a stage; check them all now, not at the grade
        # where they start to teach.
        stages = {stage.name: j for j, stage in enumerate(graded.stages)}
        for index, (student_layer, k, teacher_layer) in enumerate(loss.hints):
            if student_layer not in stages:
                raise ValueError(
                    f"hints[{index}] reads the student layer '{student_layer}'; "
                    "with a `keras_edu.GradedStudent` a hint reads the output "
                    f"of a stage, one of {list(stages)}."
                )
            self.regressors[index] = loss.make_hint_regressor(
                index,
                graded._stage_shapes[stages[student_layer]],
                self.teacher_taps[k].shapes[teacher_layer],
                name=f"hint_regressor_{index}",
            )

    def refresh(self):
        """Taps, TeacherImportance and active hints of the current student."""
        distiller, loss = self.distiller, self.loss
        graded = distiller.graded_student
        if graded is None:
            self.beta = loss.feature_layer or last_feature_layer(
                distiller.student, "the student"
            )
            self.active = list(range(len(loss.hints)))
            importance_name = "teacher_importance"
        else:
            grade = distiller.grade
            # beta: the output of the grade's last stage, the input of its
            # teaching-reference block.
            self.beta = graded.stages[grade - 1].name
            present = {stage.name for stage in graded.stages[:grade]}
            teaching = {
                k for branch in distiller._grade_routing.branches
                for k, _ in branch.members
            }
            self.active = [
                i
                for i, (student_layer, k, _) in enumerate(loss.hints)
                if student_layer in present and k in teaching
            ]
            importance_name = f"teacher_importance_grade{grade}"
        self.student_taps = FeatureTaps(
            distiller.student,
            [self.beta] + [loss.hints[i][0] for i in self.active],
            role="the student",
        )
        for i in self.active:
            if i not in self.regressors:
                student_layer, k, teacher_layer = loss.hints[i]
                self.regressors[i] = loss.make_hint_regressor(
                    i,
                    self.student_taps.shapes[student_layer],
                    self.teacher_taps[k].shapes[teacher_layer],
                    name=f"hint_regressor_{i}",
                )
        distiller._retrack(
            teacher_importance=loss.make_teacher_importance(
                len(distiller.teachers),
                self.student_taps.shapes[self.beta],
                importance_name,
            ),
            hint_regressors=[self.regressors[i] for i in self.active],
        )

    def teacher_forward(self, k, x):
        """Teacher k's float32 logits and hint maps, one pass, no gradient."""
        cached = teacher_cache.outputs_of(x, k)
        if cached is not None:
            return ops.cast(cached["logits"], "float32"), cached.get("hints", {})
        teacher = self.distiller.teachers[k]
        taps = self.teacher_taps[k]
        if taps is None:
            return ops.stop_gradient(ops.cast(teacher(x), "float32")), {}
        logits, maps = taps(x, training=False)
        # As `Teacher.call`: the teacher's activity losses are not the
        # student's.
        teacher.model._clear_losses()
        maps = {name: ops.stop_gradient(m) for name, m in maps.items()}
        return ops.stop_gradient(ops.cast(logits, "float32")), maps

    def cache_forward(self, k):
        """What the teacher cache keeps of teacher k: logits and hint maps."""
        taps = self.teacher_taps[k]
        if taps is None:
            return None
        names = list(taps.names)

        def forward(x):
            logits, *maps = taps.model.predict_on_batch(x)
            return {
                "logits": np.asarray(logits, "float32"),
                "hints": dict(zip(names, maps)),
            }

        return forward

    def branch(self, branch):
        """`run(x, logits, features)`: AMTML terms of one group of teachers.

        Returns a dict: `kd`, `hint` per row; `angle`, `distance` scalars;
        `weights` `(n, K)` (0 for teachers outside the group) and `teaches`
        `(n, K)` (1 for the group's teachers), K being all teachers.
        """
        distiller, loss = self.distiller, self.loss
        num_teachers = len(distiller.teachers)
        members = [k for k, _ in branch.members]
        hints = [i for i in self.active if loss.hints[i][1] in members]
        scatter = np.zeros((max(len(members), 1), num_teachers), "float32")
        for j, k in enumerate(members):
            scatter[j, k] = 1.0
        teaches = scatter.sum(axis=0, keepdims=True)

        def run(x, logits, features):
            zero = ops.zeros_like(logits[:, 0])
            # (n, K) rows of the group's teachers.
            teaching = ops.expand_dims(zero, 1) + ops.convert_to_tensor(teaches)
            if not members:
                return {
                    "kd": zero, "hint": zero,
                    "angle": ops.sum(zero), "distance": ops.sum(zero),
                    "weights": teaching, "teaches": teaching,
                }
            outputs = {k: self.teacher_forward(k, x) for k in members}
            targets = [
                outputs[k][0] if columns is None
                else ops.take(outputs[k][0], columns, axis=1)
                for k, columns in branch.members
            ]
            student = logits
            if branch.student_columns is not None:
                student = ops.take(logits, branch.student_columns, axis=1)
            if len(members) == 1:
                # A lone teacher weighs 1 (a softmax over one score).
                weights = ops.expand_dims(ops.ones_like(zero), 1)
            else:
                scores = distiller.teacher_importance.scores(features[self.beta])
                if members != list(range(num_teachers)):
                    scores = ops.take(scores, members, axis=1)
                weights = ops.softmax(scores, axis=-1)
            pairs = [
                (
                    outputs[loss.hints[i][1]][1][loss.hints[i][2]],
                    self.regressors[i](features[loss.hints[i][0]]),
                )
                for i in hints
            ]
            terms = loss.group_terms(targets, student, weights, pairs)
            if members != list(range(num_teachers)):
                weights = ops.matmul(weights, scatter)
            terms["weights"] = weights
            terms["teaches"] = teaching
            return terms

        return run


def _tf_replicas():
    """Replicas of the current `tf.distribute` strategy; 1 off TensorFlow."""
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def _jax_process_share():
    """This process's place in a JAX multi-process run, for the curriculum.

    Each process feeds its share of every global batch
    (`CurriculumDataset(num_processes=..., process_index=...)`).
    """
    if keras.backend.backend() != "jax":
        return {}
    import jax

    return {"num_processes": jax.process_count(), "process_index": jax.process_index()}


def _scale_for_replicas(loss):
    """Divides the loss by the replicas of a `tf.distribute` strategy.

    Keras' TensorFlow trainer sums the replicas' gradients and loss values
    and expects `compute_loss` to return each replica's share, as its own
    losses do (`keras.losses.Loss` scales them); without this, training under
    `MirroredStrategy` on N devices would take N times the step.
    """
    replicas = _tf_replicas()
    return loss / replicas if replicas > 1 else loss


def _check_devices_are_supported(graded):
    """Refuses the multi-device setups `fit` would get wrong, before training."""
    if keras.backend.backend() == "torch" and keras.distribution.distribution():
        raise ValueError(
            "A keras.distribution is set "
            f"({keras.distribution.distribution()!r}), but Keras' PyTorch "
            "trainer runs `fit` on one device and would ignore it. Use the "
            "JAX backend for data-parallel distillation "
            "(docs/distributed.md), or call "
            "`keras.distribution.set_distribution(None)`."
        )
    if graded and _tf_replicas() > 1:
        raise ValueError(
            "Education distillation (a GradedStudent) does not run under a "
            "tf.distribute strategy with several replicas: each replica would "
            "get a slice of the curriculum's batch, whose rows are laid out per "
            "class group for the whole batch. Use the JAX backend with "
            "keras.distribution.DataParallel (docs/distributed.md), or train "
            "outside the strategy's scope."
        )
