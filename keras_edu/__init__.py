"""keras-edu: education distillation and adaptive multi-teacher distillation for Keras 3."""

from keras_edu import losses
from keras_edu.distiller import Distiller
from keras_edu.teacher import Teacher
from keras_edu.version import __version__

__all__ = ["Distiller", "Teacher", "losses", "__version__"]
