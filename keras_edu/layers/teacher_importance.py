"""`TeacherImportance`: instance-adaptive teacher weights of AMTML-KD."""

import keras
from keras import layers, ops

_POOLINGS = ("max", "average")


@keras.saving.register_keras_serializable(package="keras_edu")
class TeacherImportance(layers.Layer):
    """Per-example importance weights of `K` teachers (AMTML-KD, high level).

    Each teacher `k` owns a learnable latent vector `theta_k` (shape `C`);
    a learnable vector `w` (shape `C`) is shared by all teachers. For the
    student's last feature map `x`, with `beta(x)` its global max (default)
    or average pooling over the spatial axes:

        s_k(x) = sum_c beta_c(x) * theta_kc * w_c
        a(x)   = softmax_k(s(x))            # shape (batch, K), rows sum to 1

    `a(x)` weighs the teachers' softened probabilities in
    `keras_edu.losses.AdaptiveEnsembleKD`; `theta` and `w` learn through that
    term. By default the gradient into the student's features is stopped
    (the weights do not shape the student's representation).

    **L2 penalty.** `l2 * (sum w^2 + sum theta^2)` is attached to `theta`
    and `w` as Keras weight regularizers, so it appears in `layer.losses`
    (and in the `losses` of any model or `keras_edu.Distiller` that tracks
    the layer) exactly once per step, however many times the layer is
    called, and also when it is not called at all. Do not add
    `l2_penalty()` to a loss yourself: that would count it twice.

    **Initialisation.** `theta` and `w` are drawn from
    `N(0, initializer_stddev^2)` (default `1e-3`), so every score satisfies
    `|s_k| <= m = ||beta||_1 * max|theta| * max|w|`, and every initial weight
    is within `(exp(2 m) - 1) / K` of the uniform `1 / K`. With the default,
    `max|theta|, max|w| <~ 4e-3`, so `m <~ 1.6e-5 * ||beta||_1`: for a
    64-channel ResNet20 feature map with pooled activations of order 1,
    `m <~ 1e-3` and the weights are uniform to about `1e-3 / K`. (Both
    factors are small, so early on the gradients that move them are small
    too: the weights leave the uniform point gradually.)

    **Precision.** The weights are float32 variables that are never
    autocast and the features are cast to float32, so the math and the
    output are float32 whatever the dtype policy.

    Args:
        num_teachers: Number of teachers `K >= 1`.
        pooling: `"max"` (default, as drawn in the paper) or `"average"`
            (what the reference code ends up with): how `beta` pools the
            feature map over its spatial axes. Ignored for already pooled
            `(batch, C)` inputs.
        stop_gradient: If True (default), no gradient flows from the weights
            into the student's features. False lets it through.
        l2: Coefficient of the L2 penalty on `theta` and `w` (default
            `0.1`, as in the paper); `0` for none.
        initializer_stddev: Standard deviation of the normal initialiser
            of `theta` and `w` (default `1e-3`).
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Input: the student's last feature map `(batch, H, W, C)` (channels
    last; any rank >= 2 works, pooling over every axis but the first and the
    last) or an already pooled `(batch, C)`.

    Output: the weights `(batch, num_teachers)`, float32.

    Example:

    ```python
    import numpy as np
    import keras_edu.layers.teacher_importance as ti

    importance = ti.TeacherImportance(num_teachers=3)
    features = np.random.rand(2, 8, 8, 64).astype("float32")
    weights = importance(features)  # (2, 3), every entry close to 1/3
    importance.l2_penalty()  # 0.1 * (sum w^2 + sum theta^2), tiny at init
    sum(importance.losses)  # the same value, as a trainer sees it
    ```
    """

    def __init__(
        self,
        num_teachers,
        pooling="max",
        stop_gradient=True,
        l2=0.1,
        initializer_stddev=1e-3,
        **kwargs,
    ):
        # The math is float32 whatever the policy: never autocast.
        kwargs.pop("autocast", None)
        super().__init__(autocast=False, **kwargs)
        if not isinstance(num_teachers, int) or num_teachers < 1:
            raise ValueError(
                "`num_teachers` must be a positive integer. Received: "
                f"num_teachers={num_teachers!r}."
            )
        if pooling not in _POOLINGS:
            raise ValueError(
                f"`pooling` must be one of {_POOLINGS}. Received: pooling={pooling!r}."
            )
        if not isinstance(l2, (int, float)) or l2 < 0:
            raise ValueError(f"`l2` must be a number >= 0. Received: l2={l2!r}.")
        if not isinstance(initializer_stddev, (int, float)) or initializer_stddev < 0:
            raise ValueError(
                "`initializer_stddev` must be a number >= 0. Received: "
                f"initializer_stddev={initializer_stddev!r}."
            )
        self.num_teachers = num_teachers
        self.pooling = pooling
        self.stop_gradient = bool(stop_gradient)
        self.l2 = float(l2)
        self.initializer_stddev = float(initializer_stddev)

    def build(self, input_shape):
        if len(input_shape) < 2 or input_shape[-1] is None:
            raise ValueError(
                "TeacherImportance expects a feature map (batch, H, W, C) or "
                "pooled features (batch, C) with a known channel count C. "
                f"Received: input_shape={input_shape}."
            )
        channels = int(input_shape[-1])
        regularizer = keras.regularizers.L2(self.l2) if self.l2 > 0 else None
        initializer = keras.initializers.RandomNormal(stddev=self.initializer_stddev)
        self.theta = self.add_weight(
            shape=(self.num_teachers, channels),
            initializer=initializer,
            regularizer=regularizer,
            dtype="float32",
            autocast=False,
            name="theta",
        )
        self.w = self.add_weight(
            shape=(channels,),
            initializer=keras.initializers.RandomNormal(stddev=self.initializer_stddev),
            regularizer=regularizer,
            dtype="float32",
            autocast=False,
            name="w",
        )

    def pooled_features(self, inputs):
        """`beta(x)`: the float32 pooled features `(batch, C)`."""
        x = ops.cast(inputs, "float32")
        if self.stop_gradient:
            x = ops.stop_gradient(x)
        if len(x.shape) > 2:
            axes = tuple(range(1, len(x.shape) - 1))
            if self.pooling == "max":
                x = ops.max(x, axis=axes)
            else:
                x = ops.mean(x, axis=axes)
        return x

    def scores(self, inputs):
        """The logits `s(x)` of the weights, shape `(batch, num_teachers)`."""
        beta = self.pooled_features(inputs)
        # s_k = sum_c beta_c * theta_kc * w_c = beta @ (theta * w)^T
        latent = ops.convert_to_tensor(self.theta) * ops.convert_to_tensor(self.w)
        return ops.matmul(beta, ops.transpose(latent))

    def call(self, inputs):
        return ops.softmax(self.scores(inputs), axis=-1)

    def l2_penalty(self):
        """`l2 * (sum w^2 + sum theta^2)`, a float32 scalar.

        For logging or a custom loop only: the same penalty is already in
        `self.losses` (weight regularizers), which trainers add.
        """
        theta = ops.convert_to_tensor(self.theta)
        w = ops.convert_to_tensor(self.w)
        return self.l2 * (ops.sum(ops.square(w)) + ops.sum(ops.square(theta)))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_teachers)

    def compute_output_spec(self, inputs):
        return keras.KerasTensor((inputs.shape[0], self.num_teachers), dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_teachers": self.num_teachers,
                "pooling": self.pooling,
                "stop_gradient": self.stop_gradient,
                "l2": self.l2,
                "initializer_stddev": self.initializer_stddev,
            }
        )
        return config
