"""Distillation terms: each is a `keras.distillation.DistillationLoss`."""

from keras_edu.losses.soft_target_kd import SoftTargetKD

__all__ = ["SoftTargetKD"]
