"""keras-edu: education distillation and adaptive multi-teacher distillation for Keras 3."""

from keras_edu import cost
from keras_edu import data
from keras_edu import growth
from keras_edu import layers
from keras_edu import losses
from keras_edu import models
from keras_edu import nonfinite
from keras_edu import schedules
from keras_edu import visualize
from keras_edu.curriculum import CurriculumDataset
from keras_edu.distiller import Distiller
from keras_edu.grade_callback import GradeCallback
from keras_edu.graded_student import GradedStudent
from keras_edu.partition import ClassPartition
from keras_edu.per_group_accuracy import PerGroupAccuracy
from keras_edu.teacher import Teacher
from keras_edu.version import __version__

__all__ = [
    "ClassPartition",
    "CurriculumDataset",
    "Distiller",
    "GradeCallback",
    "GradedStudent",
    "PerGroupAccuracy",
    "Teacher",
    "cost",
    "data",
    "growth",
    "layers",
    "losses",
    "models",
    "nonfinite",
    "schedules",
    "visualize",
    "__version__",
]
