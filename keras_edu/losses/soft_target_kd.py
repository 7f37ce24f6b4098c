"""Hinton knowledge distillation against one teacher or an equal-weight ensemble."""

import math

import keras
from keras import ops

from keras_edu.utils import check_positive


@keras.saving.register_keras_serializable(package="keras_edu")
class SoftTargetKD(keras.distillation.DistillationLoss):
    """Soft-target KD: `T^2 * KL(p || softmax(z / T))`, averaged over teachers.

    With one teacher, `p = softmax(t / T)` (Hinton et al., 2015). With
    several teachers over the same classes, `p` is the mean of their softened
    probabilities (the AVER baseline of multi-teacher distillation: the
    probabilities are mixed, not the logits). The math runs in float32
    whatever the dtype policy.

    This is the default distillation term of `keras_edu.Distiller`. It is a
    `keras.distillation.DistillationLoss`, so it also plugs into core
    Keras's `keras.distillation.Distiller`.

    Args:
        temperature: Softmax temperature `T > 0`. `None` (default) takes the
            temperature of the `keras_edu.Distiller` it is given to.

    Example:

    ```python
    import numpy as np
    import keras_edu

    kd = keras_edu.losses.SoftTargetKD(temperature=4.0)
    teacher_logits = np.array([[2.0, 0.0, -1.0]], "float32")
    student_logits = np.array([[1.0, 0.5, 0.0]], "float32")
    kd.compute_loss(teacher_logits, student_logits)  # a scalar >= 0
    # AVER over two teachers: pass a list of logits.
    kd.per_sample_loss([teacher_logits, -teacher_logits], student_logits)
    ```
    """

    def __init__(self, temperature=None):
        if temperature is not None:
            temperature = check_positive(temperature, "temperature")
        self.temperature = temperature

    def per_sample_loss(self, teacher_outputs, student_outputs, **kwargs):
        """The loss of each example, shape `(batch,)`.

        Args:
            teacher_outputs: Teacher logits `(batch, classes)`, or a list of
                such tensors (one per teacher, same classes, same order).
            student_outputs: Student logits `(batch, classes)` over the same
                classes as the teachers.
            **kwargs: Ignored; accepted so every keras_edu term shares one
                call signature.
        """
        temperature = self._resolved_temperature()
        log_p = self.target_log_probabilities(teacher_outputs)
        log_q = ops.log_softmax(
            ops.cast(student_outputs, "float32") / temperature, axis=-1
        )
        kl = ops.sum(ops.exp(log_p) * (log_p - log_q), axis=-1)
        return (temperature**2) * kl

    def target_log_probabilities(self, teacher_outputs):
        """Log of the (averaged) softened teacher probabilities."""
        temperature = self._resolved_temperature()
        if not isinstance(teacher_outputs, (list, tuple)):
            teacher_outputs = [teacher_outputs]
        log_probs = [
            ops.log_softmax(ops.cast(t, "float32") / temperature, axis=-1)
            for t in teacher_outputs
        ]
        if len(log_probs) == 1:
            return log_probs[0]
        # log(mean_k p_k) computed stably in log space.
        return ops.logsumexp(ops.stack(log_probs), axis=0) - math.log(
            len(log_probs)
        )

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        """The batch-mean loss: a scalar, as core `keras.distillation` expects."""
        return ops.mean(self.per_sample_loss(teacher_outputs, student_outputs))

    def validate_outputs(self, teacher_outputs, student_outputs):
        # A list of teachers against one student tensor is legal here.
        pass

    def _resolved_temperature(self):
        if self.temperature is None:
            raise ValueError(
                f"{type(self).__name__} has no temperature. Pass "
                "`temperature=` to it or give it to a `keras_edu.Distiller`, "
                "which sets its own."
            )
        return self.temperature

    def get_config(self):
        return {"temperature": self.temperature}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
