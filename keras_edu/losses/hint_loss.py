"""Hint loss between channel-normalised feature maps (AMTML-KD, intermediate level)."""

import keras
from keras import ops

# `F.normalize`'s epsilon: vectors shorter than this count as zero.
_EPSILON = 1e-12


@keras.saving.register_keras_serializable(package="keras_edu")
class HintLoss(keras.distillation.DistillationLoss):
    """Mean squared error between L2-normalised student and teacher maps.

    The student map must already have the teacher's channels: pass it
    through a `keras_edu.layers.HintRegressor` (trainable 1x1 conv) first.
    Both maps are then normalised to unit L2 norm over the channel axis at
    every position, and the loss of an example is the mean, over positions
    and channels, of the squared difference. The teacher map gets no
    gradient. All math is float32 whatever the dtype policy.

    Spatial sizes: when they differ, the larger map is reduced by average
    pooling over non-overlapping windows, which needs each spatial size of
    the larger map to be an integer multiple of the smaller's (and the same
    map to be the larger along every axis). Pooling happens before the
    normalisation. Otherwise a `ValueError` names both shapes. Sizes that
    are unknown (`None`) when traced are taken to match.

    With lists of maps (one pair per hint group), the losses of the pairs
    are summed: every hint has weight 1.

    Example:

    ```python
    import numpy as np
    import keras_edu.layers.hint_regressor as hr
    import keras_edu.losses.hint_loss as hl

    regressor = hr.HintRegressor(channels=64)
    student_map = np.random.rand(2, 16, 16, 16).astype("float32")
    teacher_map = np.random.rand(2, 8, 8, 64).astype("float32")
    hint = hl.HintLoss()
    # The student map is average-pooled 2x2 to the teacher's 8x8.
    hint.compute_loss(teacher_map, regressor(student_map))  # a scalar
    ```
    """

    def per_sample_loss(self, teacher_outputs, student_outputs, **kwargs):
        """The loss of each example, shape `(batch,)`.

        Args:
            teacher_outputs: Teacher map `(batch, H_t, W_t, C)`, or a list of
                maps (one per hint group).
            student_outputs: The regressed student map `(batch, H_s, W_s, C)`,
                or a list of maps matching `teacher_outputs`.
            **kwargs: Ignored; accepted so every keras_edu term shares one
                call signature.
        """
        if isinstance(teacher_outputs, (list, tuple)) or isinstance(
            student_outputs, (list, tuple)
        ):
            teachers = list(_as_list(teacher_outputs))
            students = list(_as_list(student_outputs))
            if len(teachers) != len(students) or not teachers:
                raise ValueError(
                    "HintLoss needs one student map per teacher map. "
                    f"Received {len(teachers)} teacher map(s) and "
                    f"{len(students)} student map(s)."
                )
            total = 0.0
            for t, s in zip(teachers, students):
                total = total + self._pair_loss(t, s)
            return total
        return self._pair_loss(teacher_outputs, student_outputs)

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        """The batch-mean loss: a scalar, as core `keras.distillation` expects."""
        return ops.mean(self.per_sample_loss(teacher_outputs, student_outputs))

    def validate_outputs(self, teacher_outputs, student_outputs):
        for t, s in zip(_as_list(teacher_outputs), _as_list(student_outputs)):
            _matching_pools(tuple(t.shape), tuple(s.shape))

    def _pair_loss(self, teacher_map, student_map):
        teacher_map = ops.stop_gradient(ops.cast(teacher_map, "float32"))
        student_map = ops.cast(student_map, "float32")
        teacher_pool, student_pool = _matching_pools(
            tuple(teacher_map.shape), tuple(student_map.shape)
        )
        teacher_map = _average_pool(teacher_map, teacher_pool)
        student_map = _average_pool(student_map, student_pool)
        diff = _normalize_channels(student_map) - _normalize_channels(teacher_map)
        axes = tuple(range(1, len(diff.shape)))
        return ops.mean(ops.square(diff), axis=axes)

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _matching_pools(teacher_shape, student_shape):
    """Pool windows `(teacher_window, student_window)` that equalise the maps."""

    def fail(reason):
        raise ValueError(
            "HintLoss cannot compare the student map of shape "
            f"{student_shape} with the teacher map of shape {teacher_shape}: "
            f"{reason}"
        )

    if len(teacher_shape) != len(student_shape) or len(teacher_shape) < 2:
        fail("they need the same rank, (batch, ..., channels).")
    t_ch, s_ch = teacher_shape[-1], student_shape[-1]
    if t_ch is not None and s_ch is not None and t_ch != s_ch:
        fail(
            "the channel counts differ. Map the student's channels to the "
            "teacher's with a `keras_edu.layers.HintRegressor` first."
        )
    t_sizes, s_sizes = teacher_shape[1:-1], student_shape[1:-1]
    known = [
        (t, s) for t, s in zip(t_sizes, s_sizes) if t is not None and s is not None
    ]
    teacher_larger = any(t > s for t, s in known)
    student_larger = any(s > t for t, s in known)
    if teacher_larger and student_larger:
        fail(
            "neither map is at least as large as the other along every "
            "spatial axis, so average pooling cannot match them."
        )
    t_window, s_window = [], []
    for t, s in zip(t_sizes, s_sizes):
        if t is None or s is None or t == s:
            t_window.append(1)
            s_window.append(1)
            continue
        big, small = max(t, s), min(t, s)
        if big % small:
            fail(
                f"a spatial size {big} is not an integer multiple of {small}, "
                "so average pooling cannot match them."
            )
        t_window.append(big // small if t > s else 1)
        s_window.append(big // small if s > t else 1)
    return tuple(t_window), tuple(s_window)


def _average_pool(x, window):
    """Average over non-overlapping `window`s of the spatial axes."""
    if all(w == 1 for w in window):
        return x
    shape = tuple(x.shape)
    new_shape = [-1]
    for size, w in zip(shape[1:-1], window):
        new_shape.extend([size // w, w])
    new_shape.append(shape[-1])
    x = ops.reshape(x, tuple(new_shape))
    window_axes = tuple(2 + 2 * i for i in range(len(window)))
    return ops.mean(x, axis=window_axes)


def _normalize_channels(x):
    """`x / ||x||` over the last axis; vectors shorter than eps become 0.

    Like `torch.nn.functional.normalize` except that a vector shorter than
    `eps` (e.g. an all-zero position of a ReLU map) maps to 0 with a zero
    gradient, instead of `x / eps` with a gradient scaled by `1 / eps`.
    """
    squared = ops.sum(ops.square(x), axis=-1, keepdims=True)
    nonzero = squared > _EPSILON**2
    safe = ops.where(nonzero, squared, ops.ones_like(squared))
    return ops.where(nonzero, x * ops.rsqrt(safe), ops.zeros_like(x))
