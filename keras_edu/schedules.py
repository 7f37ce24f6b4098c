"""Learning-rate schedules that follow the grades of education distillation."""

import math

import keras
from keras import ops

__all__ = ["PerGradeCosineDecay"]


@keras.saving.register_keras_serializable(package="keras_edu")
class PerGradeCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """A cosine decay that restarts at every grade (warm restarts).

    One cosine over the whole run gives the last grade, where the last
    stage and the real head first train, only the low tail of the
    schedule. This schedule starts every grade at its own peak, optionally
    warms up linearly for `warmup_steps`, and decays with a cosine to
    `alpha * peak` at the grade's end (SGDR, Loshchilov & Hutter,
    2017, with one cycle per grade). The peak of grade `g` (1-based) is
    `initial_learning_rate * grade_decay ** (g - 1)`.

    The schedule is a function of the optimizer's step, so it needs the
    number of steps of each grade. Leave `grade_steps=None` and
    `keras_edu.GradeCallback` fills it in when `fit` starts, from the
    curriculum's batches per grade and the boundaries; or give it.

    Args:
        initial_learning_rate: The peak learning rate of grade 1.
        grade_steps: Steps of each grade, a list of positive ints (one per
            grade), or None to let `GradeCallback` set it. Steps after the
            last grade's end keep its final rate.
        warmup_steps: Steps of linear warm-up at the start of every grade
            (from `peak / warmup_steps` to `peak`). Defaults to 0.
        alpha: The rate at the end of each grade, as a fraction of its
            peak. Defaults to 0.
        grade_decay: Factor between consecutive grades' peaks. Defaults to
            1 (every grade restarts at `initial_learning_rate`).
        name: Optional name of the schedule.

    Example:

    ```python
    import keras_edu

    schedule = keras_edu.schedules.PerGradeCosineDecay(
        0.1, grade_steps=[100, 20, 40], warmup_steps=5
    )
    float(schedule(0)), float(schedule(100)), float(schedule(104))
    # (0.02, 0.02, 0.1): each grade warms up again, then decays
    ```
    """

    def __init__(
        self,
        initial_learning_rate,
        grade_steps=None,
        warmup_steps=0,
        alpha=0.0,
        grade_decay=1.0,
        name="PerGradeCosineDecay",
    ):
        super().__init__()
        _check_non_negative(initial_learning_rate, "initial_learning_rate", strict=True)
        _check_non_negative(grade_decay, "grade_decay", strict=True)
        if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
            raise ValueError(f"`alpha` must be in [0, 1]. Received: alpha={alpha!r}.")
        if not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(
                "`warmup_steps` must be a non-negative integer. Received: "
                f"warmup_steps={warmup_steps!r}."
            )
        self.initial_learning_rate = float(initial_learning_rate)
        self.warmup_steps = warmup_steps
        self.alpha = float(alpha)
        self.grade_decay = float(grade_decay)
        self.name = name
        self.grade_steps = None if grade_steps is None else _check_grade_steps(grade_steps)

    def set_grade_steps(self, grade_steps):
        """Sets the steps of each grade (`GradeCallback` calls it)."""
        self.grade_steps = _check_grade_steps(grade_steps)

    def __call__(self, step):
        if self.grade_steps is None:
            raise ValueError(
                "PerGradeCosineDecay does not know the steps of each grade yet. "
                "Train with a `keras_edu.GradeCallback` (it sets them when fit "
                "starts) or pass `grade_steps=[...]`."
            )
        step = ops.cast(step, "float32")
        lengths = [float(n) for n in self.grade_steps]
        starts = [float(sum(lengths[:g])) for g in range(len(lengths))]
        # 0-based grade of `step`: how many later grades have started.
        if len(starts) > 1:
            started = ops.greater_equal(step, ops.convert_to_tensor(starts[1:]))
            grade = ops.sum(ops.cast(started, "int32"))
        else:
            grade = ops.convert_to_tensor(0, "int32")
        start = ops.take(ops.convert_to_tensor(starts), grade)
        length = ops.take(ops.convert_to_tensor(lengths), grade)
        peak = self.initial_learning_rate * ops.power(
            self.grade_decay, ops.cast(grade, "float32")
        )
        local = step - start
        warmup = ops.minimum(float(self.warmup_steps), length)
        warming = ops.minimum((local + 1.0) / ops.maximum(warmup, 1.0), 1.0)
        progress = ops.clip(
            (local - warmup) / ops.maximum(length - warmup, 1.0), 0.0, 1.0
        )
        cosine = 0.5 * (1.0 + ops.cos(math.pi * progress))
        decayed = peak * (self.alpha + (1.0 - self.alpha) * cosine)
        return ops.where(ops.less(local, warmup), peak * warming, decayed)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "grade_steps": None if self.grade_steps is None else list(self.grade_steps),
            "warmup_steps": self.warmup_steps,
            "alpha": self.alpha,
            "grade_decay": self.grade_decay,
            "name": self.name,
        }


def per_grade_schedule(optimizer):
    """The optimizer's `PerGradeCosineDecay`, or None when it uses another."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    schedule = getattr(inner, "_learning_rate", None)
    return schedule if isinstance(schedule, PerGradeCosineDecay) else None


def _check_grade_steps(grade_steps):
    steps = list(grade_steps) if isinstance(grade_steps, (list, tuple)) else None
    if not steps or not all(isinstance(n, int) and n >= 1 for n in steps):
        raise ValueError(
            "`grade_steps` must be a non-empty list of positive integers, the "
            f"steps of each grade. Received: grade_steps={grade_steps!r}."
        )
    return steps


def _check_non_negative(value, name, strict=False):
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value > 0 if strict else value >= 0)
    if not ok:
        raise ValueError(
            f"`{name}` must be a {'positive' if strict else 'non-negative'} "
            f"finite number. Received: {name}={value!r}."
        )
