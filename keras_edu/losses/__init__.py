"""Distillation terms: each is a `keras.distillation.DistillationLoss`."""

from keras_edu.losses.adaptive_ensemble_kd import AdaptiveEnsembleKD
from keras_edu.losses.amtml import AMTML
from keras_edu.losses.hint_loss import HintLoss
from keras_edu.losses.rkd import RKDAngle
from keras_edu.losses.rkd import RKDDistance
from keras_edu.losses.soft_target_kd import SoftTargetKD

__all__ = [
    "AMTML",
    "AdaptiveEnsembleKD",
    "HintLoss",
    "RKDAngle",
    "RKDDistance",
    "SoftTargetKD",
]
