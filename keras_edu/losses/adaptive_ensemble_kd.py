"""KD against an instance-weighted ensemble of teachers (AMTML-KD, high level)."""

import math

import keras
from keras import ops

from keras_edu.losses.soft_target_kd import SoftTargetKD

# Weights below this are treated as this in log space (float32 normal range),
# which keeps the log and its gradient finite for a weight that underflows.
_TINY_WEIGHT = 1e-30


@keras.saving.register_keras_serializable(package="keras_edu")
class AdaptiveEnsembleKD(SoftTargetKD):
    """`T^2 * KL(p || softmax(z / T))` with `p = sum_k a_k softmax(t_k / T)`.

    The integrated soft target of AMTML-KD (Liu et al., 2020): the teachers'
    softened probabilities are mixed with per-example weights `a` (shape
    `(batch, K)`, rows summing to 1), usually from
    `keras_edu.layers.TeacherImportance`. Probabilities are mixed, not
    logits. The target stays differentiable with respect to `a`, so the
    importance layer learns through this term; the teachers' logits get no
    gradient. Without weights every teacher weighs `1 / K`, which is the
    AVER baseline (`keras_edu.losses.SoftTargetKD` with a list of teachers).

    The mixture is computed in log space, `log p = logsumexp_k(log a_k +
    log_softmax(t_k / T))`, so classes that every teacher rules out give no
    `0 * log 0`. All math is float32 whatever the dtype policy.

    Args:
        temperature: Softmax temperature `T > 0` (AMTML-KD's reference code
            uses 5). `None` (default) takes the temperature of the
            `keras_edu.Distiller` it is given to.

    Example:

    ```python
    import numpy as np
    import keras_edu.losses.adaptive_ensemble_kd as aekd

    kd = aekd.AdaptiveEnsembleKD(temperature=5.0)
    t1 = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]], "float32")
    t2 = np.array([[-1.0, 3.0, 0.0], [1.0, 0.0, 0.0]], "float32")
    z = np.array([[1.0, 0.5, 0.0], [0.0, 0.0, 1.0]], "float32")
    a = np.array([[0.9, 0.1], [0.5, 0.5]], "float32")  # (batch, teachers)
    kd.per_sample_loss([t1, t2], z, teacher_weights=a)  # shape (2,)
    kd.compute_loss([t1, t2], z, teacher_weights=a)  # their mean
    kd.integrated_target([t1, t2], teacher_weights=a)  # p, rows sum to 1
    ```
    """

    def per_sample_loss(
        self, teacher_outputs, student_outputs, teacher_weights=None, **kwargs
    ):
        """The loss of each example, shape `(batch,)`.

        Args:
            teacher_outputs: A list of `K` teacher logits tensors
                `(batch, classes)` (same classes, same order), or one tensor.
            student_outputs: Student logits `(batch, classes)`.
            teacher_weights: `(batch, K)` weights, rows summing to 1, or
                `None` for equal weights. Not stopped: gradients reach
                whatever produced them.
            **kwargs: Ignored; accepted so every keras_edu term shares one
                call signature.
        """
        temperature = self._resolved_temperature()
        log_p = self.target_log_probabilities(teacher_outputs, teacher_weights)
        log_q = ops.log_softmax(
            ops.cast(student_outputs, "float32") / temperature, axis=-1
        )
        kl = ops.sum(ops.exp(log_p) * (log_p - log_q), axis=-1)
        return (temperature**2) * kl

    def compute_loss(
        self, teacher_outputs, student_outputs, teacher_weights=None, **kwargs
    ):
        """The batch-mean loss: a scalar, as core `keras.distillation` expects."""
        return ops.mean(
            self.per_sample_loss(
                teacher_outputs, student_outputs, teacher_weights=teacher_weights
            )
        )

    def target_log_probabilities(self, teacher_outputs, teacher_weights=None):
        """`log p`, the log of the integrated soft target, `(batch, classes)`."""
        temperature = self._resolved_temperature()
        if not isinstance(teacher_outputs, (list, tuple)):
            teacher_outputs = [teacher_outputs]
        num_teachers = len(teacher_outputs)
        # (K, batch, classes); the teachers themselves get no gradient.
        log_probs = ops.stack(
            [
                ops.log_softmax(
                    ops.stop_gradient(ops.cast(t, "float32")) / temperature,
                    axis=-1,
                )
                for t in teacher_outputs
            ]
        )
        if teacher_weights is None:
            return ops.logsumexp(log_probs, axis=0) - math.log(num_teachers)
        weights = ops.cast(teacher_weights, "float32")
        if len(weights.shape) != 2 or (
            weights.shape[-1] is not None and weights.shape[-1] != num_teachers
        ):
            raise ValueError(
                "`teacher_weights` must have shape (batch, num_teachers) with "
                f"num_teachers={num_teachers} (one column per teacher). "
                f"Received: teacher_weights.shape={tuple(weights.shape)}."
            )
        # (K, batch, 1)
        log_weights = ops.expand_dims(
            ops.transpose(ops.log(ops.maximum(weights, _TINY_WEIGHT))), -1
        )
        return ops.logsumexp(log_weights + log_probs, axis=0)

    def integrated_target(self, teacher_outputs, teacher_weights=None):
        """`p = sum_k a_k softmax(t_k / T)`, `(batch, classes)`, float32.

        E.g. the teacher side of `keras_edu.losses.RKDAngle` in AMTML-KD.
        """
        return ops.exp(self.target_log_probabilities(teacher_outputs, teacher_weights))
