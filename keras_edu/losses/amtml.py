"""`AMTML`: adaptive multi-teacher multi-level distillation, ready for the Distiller."""

import keras
from keras import ops

from keras_edu.layers.hint_regressor import HintRegressor
from keras_edu.layers.teacher_importance import TeacherImportance
from keras_edu.losses.adaptive_ensemble_kd import AdaptiveEnsembleKD
from keras_edu.losses.amtml_wiring import AMTMLWiring
from keras_edu.losses.hint_loss import HintLoss
from keras_edu.losses.hint_loss import _matching_pools
from keras_edu.losses.rkd import RKDAngle
from keras_edu.losses.rkd import RKDDistance
from keras_edu.utils import check_positive


def _check_weight(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"`{name}` must be a number >= 0. Received: {name}={value!r}.")
    return float(value)


@keras.saving.register_keras_serializable(package="keras_edu")
class AMTML(keras.distillation.DistillationLoss):
    """AMTML-KD (Liu et al., 2020) as one `keras_edu.Distiller` loss.

    Given to `keras_edu.Distiller(student, teachers, loss=AMTML(...))`, the
    training loss of a batch is

        loss = alpha * CE(z, y)
             + (1 - alpha) * T^2 * KL(p || softmax(z / T))     # kd_loss
             + hint_weight * L_hint                            # hint_loss
             + angle_weight * L_angle                          # angle_loss
             + distance_weight * L_dist                        # distance_loss
             + l2 * (|w|^2 + |theta|^2)                        # l2_loss

    with the Distiller's `alpha` the weight of the cross-entropy (so
    `alpha=0.3` is the paper's CE weight 0.3 and KD weight 0.7) and only the
    KD term scaled by `1 - alpha`:

    - `p = sum_k a_k softmax(t_k / T)`, the teachers' softened probabilities
      mixed with per-example weights `a = softmax_k(s)`,
      `s_k = sum_c beta_c theta_kc w_c` (`keras_edu.layers.TeacherImportance`;
      `beta` is the student's last feature map, max-pooled by default).
      `theta` and `w` learn through the KD term.
    - `L_hint`: for each `(student_layer, teacher_index, teacher_layer)`
      in `hints`, a trainable 1x1 convolution (`keras_edu.layers.HintRegressor`)
      maps the student map to the teacher map's channels; both maps are
      L2-normalised over channels and compared by mean squared error
      (`keras_edu.losses.HintLoss`; the larger map is average-pooled when
      the spatial sizes differ by an integer factor). Hints are summed.
    - `L_angle`, `L_dist`: RKD angle and distance losses between the
      student's softened outputs `softmax(z / T)` and `p`
      (`keras_edu.losses.RKDAngle`, `keras_edu.losses.RKDDistance`).

    The Distiller creates, tracks and trains the `TeacherImportance` layer
    (`distiller.teacher_importance`) and one `HintRegressor` per hint
    (`distiller.hint_regressors`); they are saved in `.keras` files with the
    Distiller and are not part of `distiller.student`. It reads the student's
    features (and the teachers' hint maps) by layer name from the same
    forward pass that computes the logits, so student and teachers that
    give hints or `beta` must be functional (or `Sequential`) models.

    Used outside the Distiller (e.g. in core `keras.distillation`),
    `compute_loss(teacher_logits_list, student_logits, teacher_weights=None)`
    is the KD term alone, equal weights giving the AVER baseline.

    Args:
        hints: A list of `(student_layer_name, teacher_index,
            teacher_layer_name)` triples; `teacher_index` indexes the
            Distiller's `teachers`. Empty (default) for no hint.
        angle_weight: Weight of the RKD angle term (default `1.0`).
        distance_weight: Weight of the RKD distance term (default `0.0`,
            off).
        hint_weight: Weight of each hint (default `1.0`).
        pooling: How `beta` pools the student's last feature map: `"max"`
            (default) or `"average"`.
        stop_gradient: If True (default), no gradient flows from the teacher
            weights into the student's features `beta`.
        l2: Coefficient of the L2 penalty on `theta` and `w` (default
            `0.1`). The Distiller adds it in training only.
        temperature: Softmax temperature `T > 0` of the KD and RKD terms.
            `None` (default) takes the Distiller's.
        feature_layer: Name of the student layer whose output is `beta`'s
            feature map. `None` (default): the last layer with spatial axes
            (rank >= 3), or the penultimate layer of an MLP. With a
            `keras_edu.GradedStudent` it must be `None`: `beta` is the
            output of the grade's last stage.
        initializer_stddev: Standard deviation of the normal initialiser of
            `theta` and `w` (default `1e-3`, near-uniform first weights).

    Example:

    ```python
    import keras, numpy as np
    import keras_edu

    def cnn(width, name):
        inputs = keras.Input((8, 8, 1))
        x = keras.layers.Conv2D(width, 3, padding="same", name="features")(inputs)
        x = keras.layers.GlobalMaxPooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(4)(x), name=name)

    x = np.random.rand(32, 8, 8, 1).astype("float32")
    y = np.random.randint(0, 4, size=(32,))
    teachers = [cnn(16, "t0"), cnn(8, "t1"), cnn(12, "t2")]
    loss = keras_edu.losses.AMTML(hints=[("features", 0, "features")])
    distiller = keras_edu.Distiller(cnn(4, "student"), teachers, loss=loss)
    distiller.compile(optimizer="adam")
    history = distiller.fit(x, y, epochs=1, batch_size=16, verbose=0)
    history.history["teacher_0_weight"], history.history["hint_loss"]
    ```
    """

    def __init__(
        self,
        hints=(),
        angle_weight=1.0,
        distance_weight=0.0,
        hint_weight=1.0,
        pooling="max",
        stop_gradient=True,
        l2=0.1,
        temperature=None,
        feature_layer=None,
        initializer_stddev=1e-3,
    ):
        self.hints = _check_hints(hints)
        self.angle_weight = _check_weight(angle_weight, "angle_weight")
        self.distance_weight = _check_weight(distance_weight, "distance_weight")
        self.hint_weight = _check_weight(hint_weight, "hint_weight")
        self.l2 = _check_weight(l2, "l2")
        self.initializer_stddev = _check_weight(
            initializer_stddev, "initializer_stddev"
        )
        self.stop_gradient = bool(stop_gradient)
        if feature_layer is not None and not isinstance(feature_layer, str):
            raise ValueError(
                "`feature_layer` must be a layer name or None. Received: "
                f"feature_layer={feature_layer!r}."
            )
        self.feature_layer = feature_layer
        # Validates `pooling` (and the other layer arguments) now, not at
        # the Distiller's construction.
        TeacherImportance(1, pooling=pooling, initializer_stddev=initializer_stddev)
        self.pooling = pooling
        self._kd = AdaptiveEnsembleKD(temperature=temperature)
        self._hint = HintLoss()
        self._angle = RKDAngle()
        self._distance = RKDDistance()

    @property
    def temperature(self):
        return self._kd.temperature

    @temperature.setter
    def temperature(self, value):
        # `keras_edu.Distiller` sets its own temperature on a term without one.
        self._kd.temperature = None if value is None else check_positive(
            value, "temperature"
        )

    @property
    def log_names(self):
        """The loss terms the Distiller logs, besides `student_loss`."""
        names = ["kd_loss"]
        if self.hints and self.hint_weight > 0:
            names.append("hint_loss")
        if self.angle_weight > 0:
            names.append("angle_loss")
        if self.distance_weight > 0:
            names.append("distance_loss")
        if self.l2 > 0:
            names.append("l2_loss")
        return names

    def per_sample_loss(
        self, teacher_outputs, student_outputs, teacher_weights=None, **kwargs
    ):
        """The KD term of each example, `(batch,)` (`AdaptiveEnsembleKD`)."""
        return self._kd.per_sample_loss(
            teacher_outputs, student_outputs, teacher_weights=teacher_weights
        )

    def compute_loss(
        self, teacher_outputs, student_outputs, teacher_weights=None, **kwargs
    ):
        """The batch-mean KD term, a scalar (core `keras.distillation` API)."""
        return ops.mean(
            self.per_sample_loss(
                teacher_outputs, student_outputs, teacher_weights=teacher_weights
            )
        )

    def validate_outputs(self, teacher_outputs, student_outputs):
        # A list of teachers against one student tensor is legal here.
        pass

    def distiller_wiring(self, distiller):
        """How `distiller` runs this term (`keras_edu.Distiller` calls it)."""
        return AMTMLWiring(distiller)

    def make_teacher_importance(self, num_teachers, feature_shape, name):
        """A built `TeacherImportance` for `beta` maps of `feature_shape`.

        Its own weight regularizer is off (`l2=0`): the Distiller adds
        `l2_penalty` to the training loss only, so evaluation losses stay
        the student's.
        """
        layer = TeacherImportance(
            num_teachers,
            pooling=self.pooling,
            stop_gradient=self.stop_gradient,
            l2=0.0,
            initializer_stddev=self.initializer_stddev,
            name=name,
        )
        layer.build(tuple(feature_shape))
        return layer

    def make_hint_regressor(self, index, student_shape, teacher_shape, name):
        """A built `HintRegressor` for hint `index`; checks the map shapes."""
        student_layer, teacher_index, teacher_layer = self.hints[index]
        student_shape, teacher_shape = tuple(student_shape), tuple(teacher_shape)
        if len(student_shape) != len(teacher_shape) or teacher_shape[-1] is None:
            raise ValueError(
                f"hints[{index}] pairs the student layer '{student_layer}' "
                f"(output shape {student_shape}) with the layer "
                f"'{teacher_layer}' of teachers[{teacher_index}] (output "
                f"shape {teacher_shape}): the maps need the same rank, "
                "(batch, ..., channels), and a known teacher channel count."
            )
        regressed = student_shape[:-1] + (teacher_shape[-1],)
        try:
            _matching_pools(teacher_shape, regressed)
        except ValueError as error:
            raise ValueError(
                f"hints[{index}] pairs the student layer '{student_layer}' "
                f"(output shape {student_shape}) with the layer "
                f"'{teacher_layer}' of teachers[{teacher_index}] (output "
                f"shape {teacher_shape}), whose spatial sizes cannot be "
                "reconciled by pooling: one map must be at least as large "
                "as the other along every spatial axis, by an integer "
                "factor. Hint a student layer at a matching resolution. "
                f"({error})"
            ) from None
        layer = HintRegressor(teacher_shape[-1], name=name)
        layer.build(student_shape)
        return layer

    def group_terms(self, teacher_logits, student_logits, weights, hint_pairs):
        """The terms of one group of teachers over the same classes.

        Args:
            teacher_logits: `K` teacher logits `(n, c)`, float32, no gradient.
            student_logits: The student's logits at those classes, `(n, c)`.
            weights: `(n, K)` teacher weights, rows summing to 1.
            hint_pairs: `(teacher_map, regressed_student_map)` pairs.

        Returns:
            A dict of unweighted terms: `kd` and `hint` (the sum over
            `hint_pairs`), per example `(n,)`; `angle` and `distance`,
            scalars over the `n` rows (0 when their weight is 0).
        """
        kd = self._kd.per_sample_loss(
            teacher_logits, student_logits, teacher_weights=weights
        )
        hint = ops.zeros_like(kd)
        for teacher_map, student_map in hint_pairs:
            hint = hint + self._hint.per_sample_loss(teacher_map, student_map)
        zero = ops.sum(ops.zeros_like(kd))
        terms = {"kd": kd, "hint": hint, "angle": zero, "distance": zero}
        if self.angle_weight > 0 or self.distance_weight > 0:
            target = self._kd.integrated_target(teacher_logits, weights)
            softened = ops.softmax(
                ops.cast(student_logits, "float32") / self.temperature, axis=-1
            )
            if self.angle_weight > 0:
                terms["angle"] = self._angle.compute_loss(target, softened)
            if self.distance_weight > 0:
                terms["distance"] = self._distance.compute_loss(target, softened)
        return terms

    def l2_penalty(self, teacher_importance):
        """`l2 * (|w|^2 + |theta|^2)` of a `TeacherImportance` layer."""
        theta = ops.convert_to_tensor(teacher_importance.theta)
        w = ops.convert_to_tensor(teacher_importance.w)
        return self.l2 * (ops.sum(ops.square(theta)) + ops.sum(ops.square(w)))

    def get_config(self):
        return {
            "hints": [list(h) for h in self.hints],
            "angle_weight": self.angle_weight,
            "distance_weight": self.distance_weight,
            "hint_weight": self.hint_weight,
            "pooling": self.pooling,
            "stop_gradient": self.stop_gradient,
            "l2": self.l2,
            "temperature": self.temperature,
            "feature_layer": self.feature_layer,
            "initializer_stddev": self.initializer_stddev,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _check_hints(hints):
    if hints is None:
        return ()
    if not isinstance(hints, (list, tuple)):
        raise ValueError(
            "`hints` must be a list of (student_layer_name, teacher_index, "
            f"teacher_layer_name) triples. Received: hints={hints!r}."
        )
    checked = []
    for index, hint in enumerate(hints):
        if (
            not isinstance(hint, (list, tuple))
            or len(hint) != 3
            or not isinstance(hint[0], str)
            or isinstance(hint[1], bool)
            or not isinstance(hint[1], int)
            or hint[1] < 0
            or not isinstance(hint[2], str)
        ):
            raise ValueError(
                f"hints[{index}] must be a (student_layer_name, teacher_index, "
                "teacher_layer_name) triple: two layer names and a "
                f"non-negative teacher index. Received: {hint!r}."
            )
        checked.append((hint[0], int(hint[1]), hint[2]))
    return tuple(checked)
