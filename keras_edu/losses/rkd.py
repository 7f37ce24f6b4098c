"""Relational knowledge distillation (Park et al., 2019): angle and distance."""

import keras
from keras import ops

# `F.normalize` / RKD `pdist` epsilon.
_EPSILON = 1e-12


def _smooth_l1(x, y):
    """Mean Huber loss with delta 1 (`F.smooth_l1_loss`, mean reduction)."""
    diff = ops.abs(x - y)
    return ops.mean(ops.where(diff < 1.0, 0.5 * ops.square(diff), diff - 0.5))


def _flat_float32(x):
    x = ops.cast(x, "float32")
    if len(x.shape) != 2:
        x = ops.reshape(x, (ops.shape(x)[0], -1))
    return x


def _off_diagonal(e):
    """`(batch, batch)` booleans, False on the diagonal."""
    return ops.eye(ops.shape(e)[0], dtype="float32") < 0.5


def _check_batch(name, teacher_outputs, student_outputs):
    if isinstance(teacher_outputs, (list, tuple)) or isinstance(
        student_outputs, (list, tuple)
    ):
        raise TypeError(
            f"{name} compares one teacher tensor with one student tensor, "
            "each (batch, features). Received a list. In AMTML-KD pass the "
            "integrated target `AdaptiveEnsembleKD.integrated_target(...)` as "
            "the teacher output."
        )
    t, s = teacher_outputs.shape[0], student_outputs.shape[0]
    if t is not None and s is not None and t != s:
        raise ValueError(
            f"{name} needs the same batch on both sides. Received teacher "
            f"shape {tuple(teacher_outputs.shape)} and student shape "
            f"{tuple(student_outputs.shape)}."
        )


def triplet_angles(embeddings):
    """Cosines of the within-batch angles, `(batch, batch, batch)`.

    Entry `[i, j, k]` is the cosine of the angle at `e_i` between `e_j - e_i`
    and `e_k - e_i`. The pairs `j == i` are zero vectors by construction
    (masked explicitly: compiled code such as XLA can leave rounding noise
    in `e_i - e_i`), as are differences shorter than `1e-12`; their cosines
    are 0, as in the reference code, and give no gradient.
    """
    e = _flat_float32(embeddings)
    diff = ops.expand_dims(e, 0) - ops.expand_dims(e, 1)  # [i, j] = e_j - e_i
    squared = ops.sum(ops.square(diff), axis=-1, keepdims=True)
    nonzero = ops.logical_and(
        squared > _EPSILON**2, ops.expand_dims(_off_diagonal(e), -1)
    )
    safe = ops.where(nonzero, squared, ops.ones_like(squared))
    unit = ops.where(nonzero, diff * ops.rsqrt(safe), ops.zeros_like(diff))
    return ops.matmul(unit, ops.transpose(unit, (0, 2, 1)))


def normalized_distances(embeddings):
    """Pairwise distances divided by their mean non-zero value, `(batch, batch)`.

    As in the reference `pdist`: squared distances clamped at `1e-12`
    before the square root, with a zero diagonal; the mean is over the
    entries that are > 0 (so coincident points count, at `1e-6`). The
    squared distances are summed from the differences rather than expanded
    from the Gram matrix, so coincident points give exactly 0 in float32.
    """
    e = _flat_float32(embeddings)
    diff = ops.expand_dims(e, 0) - ops.expand_dims(e, 1)
    squared = ops.sum(ops.square(diff), axis=-1)
    distances = ops.where(
        _off_diagonal(e),
        ops.sqrt(ops.maximum(squared, _EPSILON)),
        ops.zeros_like(squared),
    )
    count = ops.sum(ops.cast(distances > 0, "float32"))
    mean = ops.sum(distances) / ops.maximum(count, 1.0)
    return distances / ops.maximum(mean, _EPSILON)


class _RelationalLoss(keras.distillation.DistillationLoss):
    """Smooth-L1 between a relation of the student's and the teacher's batch.

    Subclasses name the relation (`triplet_angles`, `normalized_distances`);
    the teacher side gets no gradient and all math is float32.
    """

    def relation(self, embeddings):
        raise NotImplementedError

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        """The batch's loss, a float32 scalar."""
        _check_batch(type(self).__name__, teacher_outputs, student_outputs)
        teacher = self.relation(
            ops.stop_gradient(ops.cast(teacher_outputs, "float32"))
        )
        return _smooth_l1(self.relation(student_outputs), teacher)

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_edu")
class RKDAngle(_RelationalLoss):
    """RKD angle loss: smooth-L1 between triplet angle cosines.

    For a batch of student embeddings and the matching teacher embeddings
    (each `(batch, d)`; higher ranks are flattened), computes the cosine of
    every within-batch angle `(i, j, k)` on both sides (`triplet_angles`)
    and returns the mean smooth-L1 (Huber, delta 1) over all `batch^3`
    entries, as the reference implementation of Park et al. (2019) does.
    The teacher side gets no gradient.

    In AMTML-KD (the structural term) the student side is the student's
    softened outputs `softmax(z / T)` and the teacher side the integrated
    target `p` of `AdaptiveEnsembleKD` (both `(batch, classes)`).

    The loss is relational: it is one scalar for the batch, from
    `compute_loss` (there is no `per_sample_loss`). Memory is
    `O(batch^2 * d + batch^3)`. All math is float32.

    Example:

    ```python
    import numpy as np
    import keras_edu.losses.rkd as rkd

    student = np.random.rand(8, 10).astype("float32")
    teacher = np.random.rand(8, 10).astype("float32")
    rkd.RKDAngle().compute_loss(teacher, student)  # a scalar >= 0
    ```
    """

    def relation(self, embeddings):
        return triplet_angles(embeddings)


@keras.saving.register_keras_serializable(package="keras_edu")
class RKDDistance(_RelationalLoss):
    """RKD distance loss: smooth-L1 between mean-normalised pairwise distances.

    Each side's pairwise Euclidean distances are divided by their mean over
    the non-zero entries (`normalized_distances`); the loss is the mean
    smooth-L1 (Huber, delta 1) over all `batch^2` entries (Park et al.,
    2019). The teacher side gets no gradient. A relational loss: one scalar
    for the batch, from `compute_loss`. All math is float32.

    Example:

    ```python
    import numpy as np
    import keras_edu.losses.rkd as rkd

    teacher = np.random.rand(8, 10).astype("float32")
    # Mean-normalised distances ignore scale: a student that is the
    # teacher times 10 has the same relations, so the loss is 0.
    loss = rkd.RKDDistance().compute_loss(teacher, 10.0 * teacher)
    assert float(loss) < 1e-6
    ```
    """

    def relation(self, embeddings):
        return normalized_distances(embeddings)
