"""The Distiller's arguments, checked once, where they enter."""

import keras
import numpy as np

from keras_edu import label_checks
from keras_edu import nonfinite
from keras_edu.losses.soft_target_kd import SoftTargetKD
from keras_edu.teacher import Teacher
from keras_edu.utils import check_integer
from keras_edu.utils import ends_in_softmax
from keras_edu.utils import input_shape_of
from keras_edu.utils import output_width

GENERALISTS_TEACH = ("auto", "group", "seen")


def resolve_loss(loss, temperature):
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


def check_student(student):
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


def student_width(student):
    width = output_width(student)
    if width is None:
        raise ValueError(
            f"Cannot tell how many classes the student '{student.name}' "
            "predicts: its output shape is unknown. Build it first (call it "
            "on a batch) or use a functional model."
        )
    return width


def wrap_teachers(teachers):
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


def check_teachers_match_student(teachers, student, num_classes):
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
        if not shapes_compatible(teacher_shape, student_shape):
            raise ValueError(
                f"`teachers[{index}]` takes inputs of shape {teacher_shape} "
                f"but the student takes {student_shape}; both see the same "
                "batches. Build them for the same input shape (resize inside "
                "the teacher with a `keras.layers.Resizing` layer if needed)."
            )


def shapes_compatible(a, b):
    if a is None or b is None:
        return True
    if len(a) != len(b):
        return False
    return all(x is None or y is None or x == y for x, y in zip(a, b))


def check_loss_can_route(term, plan):
    every_class = all(plan.covers_every_class(b) for b in range(len(plan.branches)))
    if hasattr(term, "per_sample_loss") or every_class:
        return
    raise ValueError(
        f"`loss` ({type(term).__name__}) only returns a batch scalar, so it "
        "cannot be routed to specialist teachers that cover some classes. "
        "Give it a `per_sample_loss(teacher_outputs, student_outputs)` "
        "method returning one value per example, or use teachers of all "
        "classes."
    )


def resolve_generalists_teach(value, term):
    """`generalists_teach` checked, with `"auto"` resolved for `term`."""
    if value not in GENERALISTS_TEACH:
        raise ValueError(
            "`generalists_teach` must be 'auto', 'group' or 'seen'. "
            f"Received: generalists_teach={value!r}."
        )
    if value == "auto":
        # Measured best for SoftTargetKD (docs/results.md); a term with its
        # own wiring (AMTML) mixes the generalists into each group.
        return "group" if hasattr(term, "distiller_wiring") else "seen"
    return value


def generalists(teachers, num_classes):
    """Indices of the teachers that cover every class."""
    every_class = set(range(num_classes))
    return [k for k, t in enumerate(teachers) if set(t.classes) == every_class]


def resolve_specialists_until_grade(value, graded, generalist_indices, generalists_teach, term):
    """`specialists_until_grade` checked, `"auto"` resolved.

    `"auto"` is the last grade but one when a generalist teaches the seen
    classes, measured best (docs/results.md): in the last grade the full
    network sees every class and the generalists cover them all, so the
    specialists only add a teacher pass per example. Otherwise None.
    """
    if value == "auto":
        if (
            graded is None
            or generalists_teach != "seen"
            or not generalist_indices
            or graded.partition.num_groups < 2
        ):
            return None
        return graded.partition.num_groups - 1
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(
            "`specialists_until_grade` must be `None` or a grade >= 1. "
            f"Received: specialists_until_grade={value!r}."
        )
    if graded is None:
        raise ValueError(
            "`specialists_until_grade` needs a student that grows in grades "
            "(a `keras_edu.GradedStudent`); a plain student has no grades. "
            f"Received: specialists_until_grade={value!r}."
        )
    if value < graded.partition.num_groups and not generalist_indices:
        raise ValueError(
            f"`specialists_until_grade={value}` leaves grades "
            f"{value + 1}..{graded.partition.num_groups} with no "
            "teacher: it retires the specialists, and no teacher covers every "
            "class. Add a generalist teacher or pass "
            "`specialists_until_grade=None`."
        )
    if hasattr(term, "distiller_wiring"):
        raise ValueError(
            f"`specialists_until_grade` is not supported with an {type(term).__name__} "
            "loss (AMTML mixes each group's specialists with the generalists). "
            "Pass `specialists_until_grade=None`."
        )
    return int(value)


def check_batch_size(batch_size):
    return check_integer(batch_size, "batch_size")


def check_fit_inputs(x, y, batch_size, distiller):
    """Labels, input arrays and finiteness, checked before the first step.

    NumPy (or list) labels: `keras_edu.label_checks.check_labels`. A NumPy
    `x` that does not fit the student or `y`:
    `keras_edu.label_checks.check_input_array`. NaN or Inf inputs, and a
    teacher whose logits on the first batch are not finite:
    `keras_edu.nonfinite.check_before_training`.
    """
    if isinstance(y, (np.ndarray, list)):
        label_checks.check_labels(y, distiller.num_classes)
    input_shape = input_shape_of(distiller.student)
    label_checks.check_input_array(x, input_shape, y)
    nonfinite.check_before_training(x, batch_size, input_shape, distiller.teachers)
