"""Bad labels fail before training, with the same message on every backend."""

import keras
import numpy as np
import pytest

import keras_edu
from keras_edu.label_checks import check_labels


def _distiller(num_classes=6):
    def model():
        return keras.Sequential(
            [keras.Input((4,)), keras.layers.Dense(num_classes)]
        )

    distiller = keras_edu.Distiller(model(), [model()])
    distiller.compile(optimizer="sgd")
    return distiller


X = np.random.default_rng(0).random((8, 4)).astype("float32")


@pytest.mark.parametrize(
    "y, match",
    [
        (np.full(8, 12), "labels outside \\[0, 6\\), the first 12, but the student has 6 outputs"),
        (np.full(8, -1), "outside \\[0, 6\\), the first -1"),
        (np.full(8, 0.25), "8 labels that are not class ids, the first 0.25"),
        (np.array([0, 1, 2, np.nan, 0, 1, 2, 3]), "1 labels that are not class ids"),
        (np.eye(6)[[0, 1, 2, 3, 4, 5, 0, 1]] * 2.0, "not distributions"),
        (np.zeros((8, 3)), "has shape \\(8, 3\\)"),
        (np.array(["cat"] * 8), "numeric class ids"),
        (np.zeros((8, 2, 2)), "has shape \\(8, 2, 2\\)"),
    ],
)
def test_bad_labels_fail_before_the_first_step_naming_y(y, match):
    distiller = _distiller()
    before = [keras.ops.convert_to_numpy(v).copy() for v in distiller.student.weights]
    with pytest.raises(ValueError, match=f"`y` .*{match}|{match}"):
        distiller.fit(X, y, epochs=1, batch_size=4, verbose=0)
    after = [keras.ops.convert_to_numpy(v) for v in distiller.student.weights]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)  # no step ran


@pytest.mark.parametrize(
    "y",
    [
        np.arange(8) % 6,
        (np.arange(8) % 6).reshape(-1, 1),
        (np.arange(8) % 6).astype("float32"),
        np.eye(6, dtype="float32")[np.arange(8) % 6],
        np.full((8, 6), 1.0 / 6.0, "float32"),  # soft labels
    ],
)
def test_valid_labels_train_one_finite_step(y):
    history = _distiller().fit(X, y, epochs=1, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_graded_fit_checks_labels_too():
    partition = keras_edu.ClassPartition.contiguous(6, "1:1:1")
    stages = [keras.Sequential([keras.layers.Conv2D(4, 3, padding="same")]) for _ in range(3)]
    head = keras.Sequential([keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(6)])
    student = keras_edu.GradedStudent(stages, head, partition, input_shape=(4, 4, 1))
    teachers = [
        keras_edu.Teacher(
            keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(len(g))]),
            classes=g,
        )
        for g in partition.groups
    ]
    distiller = keras_edu.Distiller(student, teachers)
    distiller.compile(optimizer="sgd")
    x = np.zeros((6, 4, 4, 1), "float32")
    with pytest.raises(ValueError, match="not class ids, the first 0.5"):
        distiller.fit(x, np.array([0, 1, 2, 3, 4, 0.5]), epochs=1, verbose=0)


def test_check_labels_names_the_argument():
    with pytest.raises(ValueError, match="^`labels` holds"):
        check_labels([7], num_classes=3, name="labels")
