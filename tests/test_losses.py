"""Tests of `keras_edu.losses.SoftTargetKD` against a NumPy reference."""

import keras
import numpy as np
import pytest

import keras_edu
from keras_edu.losses import SoftTargetKD
from helpers import np_kl
from helpers import np_softmax
from helpers import to_numpy

# --------------------------------------------------------------------------
# NumPy reference, written out by hand.
# --------------------------------------------------------------------------


def np_soft_target_kd(teacher_logits_list, student_logits, temperature):
    """T^2 * KL(mean_k softmax(t_k / T) || softmax(z / T)), per example."""
    t = np.float64(temperature)
    probs = [np_softmax(np.asarray(l, "float64") / t) for l in teacher_logits_list]
    p = np.mean(probs, axis=0)
    q = np_softmax(np.asarray(student_logits, "float64") / t)
    return t**2 * np_kl(p, q)


def random_logits(shape, seed, scale=3.0):
    rng = np.random.default_rng(seed)
    return (scale * rng.normal(size=shape)).astype("float32")


# --------------------------------------------------------------------------
# Values.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_per_sample_loss_matches_numpy(temperature):
    teacher = random_logits((7, 5), seed=1)
    student = random_logits((7, 5), seed=2)
    kd = SoftTargetKD(temperature=temperature)
    out = to_numpy(kd.per_sample_loss(teacher, student))
    assert out.shape == (7,)
    expected = np_soft_target_kd([teacher], student, temperature)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert (out >= -1e-6).all()


def test_hand_computed_two_class_example():
    # T = 2, teacher [2, 0] -> p = softmax([1, 0]); student [0, 0] -> q = 1/2.
    p1 = np.exp(1.0) / (np.exp(1.0) + 1.0)
    p = np.array([p1, 1.0 - p1])
    expected = 4.0 * np.sum(p * np.log(p / 0.5))
    kd = SoftTargetKD(temperature=2.0)
    out = to_numpy(
        kd.per_sample_loss(
            np.array([[2.0, 0.0]], "float32"), np.array([[0.0, 0.0]], "float32")
        )
    )
    np.testing.assert_allclose(out, [expected], rtol=1e-5)


def test_compute_loss_is_the_batch_mean_of_numpy_values():
    teacher = random_logits((9, 4), seed=3)
    student = random_logits((9, 4), seed=4)
    kd = SoftTargetKD(temperature=3.0)
    out = to_numpy(kd.compute_loss(teacher, student))
    assert out.shape == ()
    expected = np_soft_target_kd([teacher], student, 3.0).mean()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_loss_is_zero_when_student_equals_teacher():
    logits = random_logits((4, 6), seed=5)
    out = to_numpy(SoftTargetKD(temperature=4.0).per_sample_loss(logits, logits))
    np.testing.assert_allclose(out, np.zeros(4), atol=1e-5)


def test_adding_a_constant_to_logits_does_not_change_the_loss():
    teacher = random_logits((4, 3), seed=6)
    student = random_logits((4, 3), seed=7)
    kd = SoftTargetKD(temperature=2.0)
    base = to_numpy(kd.per_sample_loss(teacher, student))
    shifted = to_numpy(kd.per_sample_loss(teacher + 5.0, student - 3.0))
    np.testing.assert_allclose(base, shifted, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------
# AVER: several teachers over the same classes mix probabilities.
# --------------------------------------------------------------------------


def test_aver_two_teachers_matches_numpy_probability_mixing():
    t1 = random_logits((6, 5), seed=8)
    t2 = random_logits((6, 5), seed=9)
    student = random_logits((6, 5), seed=10)
    kd = SoftTargetKD(temperature=2.0)
    out = to_numpy(kd.per_sample_loss([t1, t2], student))
    expected = np_soft_target_kd([t1, t2], student, 2.0)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    # A tuple works as well as a list, and the order of teachers is moot.
    swapped = to_numpy(kd.per_sample_loss((t2, t1), student))
    np.testing.assert_allclose(swapped, out, rtol=1e-5, atol=1e-6)
    mean = to_numpy(kd.compute_loss([t1, t2], student))
    np.testing.assert_allclose(mean, expected.mean(), rtol=1e-5, atol=1e-6)


def test_aver_mixes_probabilities_not_logits():
    # Opposite teachers: averaging their logits gives a uniform target,
    # averaging their probabilities does not.
    t1 = np.array([[4.0, 0.0, 0.0]], "float32")
    t2 = np.array([[-4.0, 0.0, 0.0]], "float32")
    student = np.array([[0.0, 0.0, 0.0]], "float32")
    kd = SoftTargetKD(temperature=1.0)
    out = to_numpy(kd.per_sample_loss([t1, t2], student))

    p = 0.5 * (np_softmax(t1.astype("float64")) + np_softmax(t2.astype("float64")))
    by_probabilities = np_kl(p, np.full((1, 3), 1.0 / 3.0))
    by_logits = np_soft_target_kd([(t1 + t2) / 2.0], student, 1.0)  # == 0
    np.testing.assert_allclose(out, by_probabilities, rtol=1e-5)
    assert by_probabilities[0] > 0.04
    np.testing.assert_allclose(by_logits, [0.0], atol=1e-12)
    assert abs(out[0] - by_logits[0]) > 0.04


def test_aver_of_identical_teachers_equals_single_teacher():
    teacher = random_logits((5, 4), seed=11)
    student = random_logits((5, 4), seed=12)
    kd = SoftTargetKD(temperature=4.0)
    np.testing.assert_allclose(
        to_numpy(kd.per_sample_loss([teacher, teacher, teacher], student)),
        to_numpy(kd.per_sample_loss(teacher, student)),
        rtol=1e-5,
        atol=1e-6,
    )


# --------------------------------------------------------------------------
# Dtypes.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_inputs_give_float32_result(dtype):
    teacher = random_logits((6, 5), seed=13)
    student = random_logits((6, 5), seed=14)
    t_half = keras.ops.cast(teacher, dtype)
    s_half = keras.ops.cast(student, dtype)
    kd = SoftTargetKD(temperature=2.0)
    per_sample = kd.per_sample_loss(t_half, s_half)
    scalar = kd.compute_loss([t_half, t_half], s_half)
    assert keras.backend.standardize_dtype(per_sample.dtype) == "float32"
    assert keras.backend.standardize_dtype(scalar.dtype) == "float32"
    # Compared with the reference on the rounded half-precision inputs.
    t_rounded = to_numpy(keras.ops.cast(t_half, "float32"))
    s_rounded = to_numpy(keras.ops.cast(s_half, "float32"))
    expected = np_soft_target_kd([t_rounded], s_rounded, 2.0)
    np.testing.assert_allclose(to_numpy(per_sample), expected, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------
# Temperature.
# --------------------------------------------------------------------------


def test_missing_temperature_raises_a_clear_error():
    kd = SoftTargetKD()
    assert kd.temperature is None
    logits = random_logits((2, 3), seed=15)
    with pytest.raises(ValueError, match="SoftTargetKD has no temperature"):
        kd.per_sample_loss(logits, logits)
    with pytest.raises(ValueError, match="SoftTargetKD has no temperature"):
        kd.compute_loss(logits, logits)


@pytest.mark.parametrize("temperature", [0, 0.0, -1.0, "4"])
def test_bad_temperature_is_rejected(temperature):
    with pytest.raises(ValueError, match="`temperature` must be a positive"):
        SoftTargetKD(temperature=temperature)


# --------------------------------------------------------------------------
# Serialisation.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [None, 2.5])
def test_serialisation_round_trip(temperature):
    kd = SoftTargetKD(temperature=temperature)
    config = kd.get_config()
    assert config == {"temperature": temperature}
    assert SoftTargetKD.from_config(config).temperature == temperature
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(kd)
    )
    assert isinstance(restored, SoftTargetKD)
    assert restored.temperature == temperature


def test_is_a_core_distillation_loss_and_exported():
    assert keras_edu.losses.SoftTargetKD is SoftTargetKD
    assert isinstance(SoftTargetKD(2.0), keras.distillation.DistillationLoss)


# --------------------------------------------------------------------------
# Inside core Keras's Distiller.
# --------------------------------------------------------------------------


def test_usable_in_core_keras_distiller():
    def mlp(width):
        return keras.Sequential([keras.Input((8,)), keras.layers.Dense(width)])

    teacher = mlp(4)
    student = mlp(4)
    distiller = keras.distillation.Distiller(
        teacher=teacher,
        student=student,
        distillation_losses=SoftTargetKD(temperature=2.0),
        student_loss_weight=0.5,
    )
    distiller.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(16)
    x = rng.normal(size=(16, 8)).astype("float32")
    y = rng.integers(0, 4, size=(16,))
    history = distiller.fit(x, y, epochs=1, batch_size=16, verbose=0)
    loss = history.history["loss"][0]
    assert np.isfinite(loss)
    assert loss > 0.0
