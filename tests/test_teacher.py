"""Tests of `keras_edu.Teacher`: class declaration, freezing, serialisation."""

import keras
import numpy as np
import pytest

import keras_edu
from helpers import bn_dropout_model
from helpers import to_numpy


def dense_model(width, input_dim=8, name=None):
    return keras.Sequential(
        [keras.Input((input_dim,)), keras.layers.Dense(width)], name=name
    )


def inputs(batch=5, dim=8):
    return np.random.default_rng(0).normal(size=(batch, dim)).astype("float32")


# --------------------------------------------------------------------------
# Classes, output.
# --------------------------------------------------------------------------


def test_default_classes_are_all_logits_in_order():
    teacher = keras_edu.Teacher(dense_model(4))
    assert teacher.classes == (0, 1, 2, 3)
    assert teacher.num_classes == 4


def test_explicit_classes_keep_their_order():
    teacher = keras_edu.Teacher(dense_model(3), classes=[5, 3, 1])
    assert teacher.classes == (5, 3, 1)
    assert teacher.num_classes == 3
    assert all(type(c) is int for c in teacher.classes)


def test_numpy_integer_classes_are_accepted():
    teacher = keras_edu.Teacher(dense_model(2), classes=np.array([7, 2]))
    assert teacher.classes == (7, 2)


def test_output_is_the_models_logits_unchanged():
    model = dense_model(3)
    teacher = keras_edu.Teacher(model, classes=[5, 3, 1])
    x = inputs(batch=6)
    out = to_numpy(teacher(x))
    assert out.shape == (6, 3)
    # The teacher does not reorder logits: column i is classes[i].
    np.testing.assert_allclose(out, to_numpy(model(x)), rtol=1e-6, atol=1e-6)


def test_name_defaults_to_model_name_and_can_be_set():
    assert keras_edu.Teacher(dense_model(2, name="net")).name == "teacher_net"
    assert keras_edu.Teacher(dense_model(2), name="t0").name == "t0"


def test_unbuilt_subclassed_model_needs_explicit_classes():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(x)

    with pytest.raises(ValueError, match="Cannot tell how many classes"):
        keras_edu.Teacher(Net())
    teacher = keras_edu.Teacher(Net(), classes=[2, 0, 1])
    assert teacher.classes == (2, 0, 1)
    assert to_numpy(teacher(inputs(batch=4))).shape == (4, 3)


# --------------------------------------------------------------------------
# Frozen.
# --------------------------------------------------------------------------


def test_teacher_is_frozen_even_with_batchnorm():
    model = bn_dropout_model(4)
    num_weights = len(model.weights)
    teacher = keras_edu.Teacher(model)
    assert teacher.trainable_weights == []
    assert model.trainable_weights == []
    assert len(teacher.non_trainable_weights) == num_weights
    assert not teacher.trainable
    assert not model.trainable


def test_teacher_runs_in_inference_mode_whatever_the_caller_asks():
    model = bn_dropout_model(4)
    teacher = keras_edu.Teacher(model)
    bn = model.layers[1]
    before = [to_numpy(v).copy() for v in model.weights]
    # Inputs far from BN's initial statistics (mean 0, var 1): a BN in
    # training mode would both change the output and the moving stats.
    x = inputs(batch=32) * 5.0 + 3.0
    expected = to_numpy(model(x, training=False))
    out1 = to_numpy(teacher(x, training=True))
    out2 = to_numpy(teacher(x, training=True))
    # Dropout is off (deterministic) and BN uses its moving statistics.
    np.testing.assert_allclose(out1, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out2, expected, rtol=1e-5, atol=1e-5)
    for b, v in zip(before, model.weights):
        np.testing.assert_array_equal(b, to_numpy(v))
    np.testing.assert_array_equal(to_numpy(bn.moving_mean), np.zeros(16))
    np.testing.assert_array_equal(to_numpy(bn.moving_variance), np.ones(16))


# --------------------------------------------------------------------------
# Serialisation.
# --------------------------------------------------------------------------


def test_get_config_from_config_round_trip():
    teacher = keras_edu.Teacher(dense_model(3), classes=[5, 3, 1], name="spec")
    config = teacher.get_config()
    assert config["classes"] == [5, 3, 1]
    clone = keras_edu.Teacher.from_config(config)
    assert isinstance(clone, keras_edu.Teacher)
    assert clone.classes == (5, 3, 1)
    assert clone.name == "spec"
    assert clone.trainable_weights == []
    assert clone.get_config() == config
    # Same architecture: copying the weights gives the same logits.
    clone.model.set_weights(teacher.model.get_weights())
    x = inputs()
    np.testing.assert_allclose(
        to_numpy(clone(x)), to_numpy(teacher(x)), rtol=1e-6, atol=1e-6
    )


def test_keras_serialize_deserialize_round_trip():
    teacher = keras_edu.Teacher(dense_model(2), classes=[4, 0])
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(teacher)
    )
    assert isinstance(restored, keras_edu.Teacher)
    assert restored.classes == (4, 0)
    assert not restored.model.trainable


# --------------------------------------------------------------------------
# Bad inputs.
# --------------------------------------------------------------------------


def test_width_must_match_number_of_classes():
    with pytest.raises(ValueError, match=r"outputs 3 logits .* lists 2 class"):
        keras_edu.Teacher(dense_model(3), classes=[0, 1])


def test_duplicate_class_ids_are_rejected():
    with pytest.raises(ValueError, match=r"must not repeat.*\[1\]"):
        keras_edu.Teacher(dense_model(3), classes=[1, 2, 1])


def test_negative_class_ids_are_rejected():
    with pytest.raises(ValueError, match=r"non-negative.*\[-1\]"):
        keras_edu.Teacher(dense_model(2), classes=[0, -1])


def test_empty_classes_are_rejected():
    with pytest.raises(ValueError, match="non-empty list of integer"):
        keras_edu.Teacher(dense_model(2), classes=[])


def test_non_integer_classes_are_rejected():
    with pytest.raises(ValueError, match="integer class ids"):
        keras_edu.Teacher(dense_model(2), classes=[0.0, 1.0])


@pytest.mark.parametrize(
    "not_a_model",
    [keras.layers.Dense(3), lambda x: x, "teacher"],
    ids=["layer", "function", "string"],
)
def test_model_must_be_a_keras_model(not_a_model):
    with pytest.raises(ValueError, match=r"`model` must be a `keras.Model`"):
        keras_edu.Teacher(not_a_model)
