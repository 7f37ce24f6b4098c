"""Keras layers of keras_edu."""

from keras_edu.layers.teaching_reference import TeachingReference

__all__ = ["TeachingReference"]
