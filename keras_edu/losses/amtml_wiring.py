"""What a `keras_edu.Distiller` needs to run `keras_edu.losses.AMTML`."""

import keras
import numpy as np
from keras import ops

from keras_edu import _keras_internals
from keras_edu import teacher_cache
from keras_edu.feature_taps import FeatureTaps
from keras_edu.feature_taps import last_feature_layer
from keras_edu.term_wiring import TermWiring
from keras_edu.term_wiring import taught_mean


class AMTMLWiring(TermWiring):
    """Feature taps, teacher importance and hint regressors of an AMTML term.

    Holds the feature taps (one tap model for the student, one per teacher
    that gives hints), every hint regressor made so far, and which hints
    teach at the current grade. The Distiller tracks (so trains and saves)
    the `TeacherImportance` layer and the active regressors, set on it as
    `teacher_importance` and `hint_regressors`; the tap models are not
    tracked, their weights being the student's and the teachers'.
    """

    hidden_log_keys = ("distillation_loss",)
    # The relational terms are batch scalars over every row of a branch,
    # taught or not, so every teacher's cache covers every sample.
    cache_taught_rows_only = False

    def __init__(self, distiller):
        super().__init__(distiller)
        loss, teachers = self.term, distiller.teachers
        for index, (_, k, _) in enumerate(loss.hints):
            if k >= len(teachers):
                raise ValueError(
                    f"hints[{index}] names teachers[{k}], but the Distiller "
                    f"has {len(teachers)} teacher(s)."
                )
        hinted = {}
        for _, k, teacher_layer in loss.hints:
            hinted.setdefault(k, []).append(teacher_layer)
        self.teacher_taps = [
            FeatureTaps(t.model, hinted[k], role=f"teachers[{k}]") if k in hinted else None
            for k, t in enumerate(teachers)
        ]
        # Hint index -> HintRegressor; kept when the student grows, since
        # the stage it reads survives.
        self.regressors = {}
        if distiller.graded_student is None:
            self._check_plain_teachers()
        else:
            self._check_graded_student()
        distiller.amtml_loss_trackers = {
            key: keras.metrics.Mean(name=key) for key in loss.log_names
        }
        distiller.teacher_weight_trackers = [
            keras.metrics.Mean(name=f"teacher_{k}_weight") for k in range(len(teachers))
        ]
        self.log_keys = TermWiring.log_keys + tuple(loss.log_names) + tuple(
            t.name for t in distiller.teacher_weight_trackers
        )
        self.refresh()

    def _check_plain_teachers(self):
        plan = self.distiller._plan
        if len(plan.shared_branches) != 1 or not plan.covers_every_class(0):
            raise ValueError(
                "AMTML mixes teachers of the same classes: every teacher "
                "must cover all the student's classes (generalists). "
                f"Received teachers covering {[t.classes for t in self.distiller.teachers]}. "
                "For specialists of class groups, use a "
                "`keras_edu.GradedStudent` curriculum (a group covered by "
                "several teachers is taught by AMTML) or the default "
                "`SoftTargetKD`."
            )

    def _check_graded_student(self):
        loss, graded = self.term, self.distiller.graded_student
        if self.distiller._plan.shared_branches:
            raise ValueError(
                "`generalists_teach='seen'` is not supported with an AMTML "
                "loss; use generalists_teach='group' (AMTML then mixes the "
                "generalists with each group's specialists)."
            )
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
        distiller, loss = self.distiller, self.term
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
            teaching = {k for b in distiller._plan.branches for k in b.teachers}
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
                _, k, teacher_layer = loss.hints[i]
                self.regressors[i] = loss.make_hint_regressor(
                    i,
                    self.student_taps.shapes[loss.hints[i][0]],
                    self.teacher_taps[k].shapes[teacher_layer],
                    name=f"hint_regressor_{i}",
                )
        _keras_internals.replace_tracked(
            distiller,
            teacher_importance=loss.make_teacher_importance(
                len(distiller.teachers),
                self.student_taps.shapes[self.beta],
                importance_name,
            ),
            hint_regressors=[self.regressors[i] for i in self.active],
        )

    def forward(self, inputs, training):
        if not training:
            return self.distiller.student(inputs, training=training)
        # One student forward gives the logits and the tapped feature maps:
        # {"logits": z, "features": {layer: map}}.
        logits, features = self.student_taps(inputs, training=True)
        return {"logits": logits, "features": features}

    def split_prediction(self, y_pred):
        if isinstance(y_pred, dict):
            return y_pred["logits"], y_pred["features"]
        return y_pred, None

    def features_for(self, x, features):
        if features is not None:
            return features
        # Logits given without features (a call by hand): read the features
        # from an inference-mode pass of the tap model.
        _, features = self.student_taps(teacher_cache.inputs_of(x), training=False)
        return features

    def teacher_output(self, k, x):
        """Teacher k's float32 logits and hint maps, one pass, no gradient."""
        cached = teacher_cache.outputs_of(x, k)
        if cached is not None:
            return {
                "logits": ops.cast(cached["logits"], "float32"),
                "hints": cached.get("hints", {}),
            }
        taps = self.teacher_taps[k]
        if taps is None:
            return dict(super().teacher_output(k, x), hints={})
        logits, maps = taps(x, training=False)
        # As `Teacher.call`: the teacher's activity losses are not the
        # student's.
        _keras_internals.clear_losses(self.distiller.teachers[k].model)
        return {
            "logits": ops.stop_gradient(ops.cast(logits, "float32")),
            "hints": {name: ops.stop_gradient(m) for name, m in maps.items()},
        }

    def cache_forward(self, k):
        taps = self.teacher_taps[k]
        if taps is None:
            return super().cache_forward(k)
        names = list(taps.names)

        def forward(x):
            logits, *maps = taps.model.predict_on_batch(x)
            return {"logits": np.asarray(logits, "float32"), "hints": dict(zip(names, maps))}

        return forward

    def run_branch(self, branch, x, logits, features):
        """AMTML terms of one branch: `kd`, `hint` per row; `angle`,
        `distance` scalars; `weights` `(n, K)` (0 for teachers outside the
        branch) and `teaches` `(n, K)` (1 for its teachers), K being all
        teachers."""
        loss, num_teachers = self.term, len(self.distiller.teachers)
        members = branch.teachers
        scatter = np.zeros((max(len(members), 1), num_teachers), "float32")
        for j, k in enumerate(members):
            scatter[j, k] = 1.0
        zero = ops.zeros_like(logits[:, 0])
        teaching = ops.expand_dims(zero, 1) + ops.convert_to_tensor(
            scatter.sum(axis=0, keepdims=True)
        )
        if not members:
            return {
                "kd": zero, "hint": zero, "angle": ops.sum(zero),
                "distance": ops.sum(zero), "weights": teaching, "teaches": teaching,
            }
        outputs = {k: self.teacher_output(k, x) for k in members}
        targets = [
            outputs[k]["logits"] if columns is None
            else ops.take(outputs[k]["logits"], columns, axis=1)
            for k, columns in branch.members
        ]
        student = logits
        if branch.student_columns is not None:
            student = ops.take(logits, branch.student_columns, axis=1)
        if len(members) == 1:
            # A lone teacher weighs 1 (a softmax over one score).
            weights = ops.expand_dims(ops.ones_like(zero), 1)
        else:
            scores = self.distiller.teacher_importance.scores(features[self.beta])
            if members != list(range(num_teachers)):
                scores = ops.take(scores, members, axis=1)
            weights = ops.softmax(scores, axis=-1)
        pairs = [
            (
                outputs[loss.hints[i][1]]["hints"][loss.hints[i][2]],
                self.regressors[i](features[loss.hints[i][0]]),
            )
            for i in self.active
            if loss.hints[i][1] in members
        ]
        terms = loss.group_terms(targets, student, weights, pairs)
        if members != list(range(num_teachers)):
            weights = ops.matmul(weights, scatter)
        terms["weights"] = weights
        terms["teaches"] = teaching
        return terms

    def total_loss(self, student_loss, terms, taught, sample_weight):
        """`alpha * CE + (1 - alpha) * KD + hint + angle [+ distance] + L2`.

        Only the KD term is scaled by `1 - alpha` (METHOD.md, section 2).
        KD and hints are averaged over the taught rows; the relational
        terms are batch scalars (over each group's rows in a curriculum).
        """
        distiller, loss = self.distiller, self.term
        values = {
            "kd_loss": taught_mean(terms["kd"], taught, sample_weight),
            "hint_loss": taught_mean(terms["hint"], taught, sample_weight),
            "angle_loss": terms["angle"],
            "distance_loss": terms["distance"],
            "l2_loss": loss.l2_penalty(distiller.teacher_importance),
        }
        total = (
            distiller.alpha * student_loss
            + (1.0 - distiller.alpha) * values["kd_loss"]
            + loss.hint_weight * values["hint_loss"]
            + loss.angle_weight * values["angle_loss"]
            + loss.distance_weight * values["distance_loss"]
            + values["l2_loss"]
        )
        if distiller.graded_student is not None:
            # A step of a group whose teachers give no hint leaves some
            # active regressors out of the graph (PyTorch runs one branch
            # of `ops.switch`); a zero term gives them a zero gradient
            # instead of none, which optimizers warn about.
            for regressor in distiller.hint_regressors:
                total = total + 0.0 * ops.sum(regressor.kernel)
        batch_size = ops.shape(taught)[0]
        for key, tracker in distiller.amtml_loss_trackers.items():
            tracker.update_state(values[key], batch_size)
        # Teacher k's mean weight over the rows it teaches.
        for k, tracker in enumerate(distiller.teacher_weight_trackers):
            tracker.update_state(terms["weights"][:, k], sample_weight=terms["teaches"][:, k])
        return total

    def teacher_weights(self, x, batch_size):
        if self.distiller.graded_student is not None:
            raise ValueError(
                "`teacher_weights` supports a plain student only: in "
                "education distillation each group mixes its own teachers, "
                "so the weights of an example depend on its label. Read "
                "the `teacher_{k}_weight` logs of `fit` instead."
            )
        rows = []
        for start in range(0, len(x), batch_size):
            _, features = self.student_taps(x[start : start + batch_size], training=False)
            weights = self.distiller.teacher_importance(features[self.beta])
            rows.append(ops.convert_to_numpy(ops.cast(weights, "float32")))
        return np.concatenate(rows, axis=0)
