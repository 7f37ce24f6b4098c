"""Keras layers of keras_edu."""

from keras_edu.layers.hint_regressor import HintRegressor
from keras_edu.layers.teacher_importance import TeacherImportance
from keras_edu.layers.teaching_reference import TeachingReference

__all__ = ["HintRegressor", "TeacherImportance", "TeachingReference"]
