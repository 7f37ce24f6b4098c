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


# --------------------------------------------------------------- batch by batch


class _Batches(keras.utils.PyDataset):
    """Labels that reach the step one batch at a time, unchecked up front."""

    def __init__(self, y, batch_size=4):
        super().__init__()
        self.y, self.batch_size = np.asarray(y), batch_size

    def __len__(self):
        return len(self.y) // self.batch_size

    def __getitem__(self, index):
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return X[rows], self.y[rows]


@pytest.mark.parametrize(
    "y, match",
    [
        (np.array([0, 1, 2, 3, 12, 12, 12, 5]), "3 labels seen by epoch 1 .* 6 outputs, the first 12 "),
        (np.array([0, 1, 2, 3, 4, 5, -1, 0]), "1 labels .* the first -1 "),
        (np.array([0.5, 1, 2, 3, 4, 5, 0, 1], "float32"), "1 labels .* the first 0.5 "),
        (np.eye(6, dtype="float32")[np.arange(8) % 6] * 2.0, "8 labels .* the first 2 "),
    ],
)
def test_bad_labels_batch_by_batch_fail_at_the_end_of_the_first_epoch(y, match):
    distiller = _distiller()
    with pytest.raises(ValueError, match=f"`y`: {match}"):
        distiller.fit(_Batches(y), epochs=3, verbose=0)
    # Stopped after the first epoch: 2 steps, not 6.
    assert int(keras.ops.convert_to_numpy(distiller.optimizer.iterations)) == 2


def test_bad_labels_in_a_tf_data_pipeline_fail_the_same_way():
    tf = pytest.importorskip("tensorflow")
    y = np.full(8, 12)
    dataset = tf.data.Dataset.from_tensor_slices((X, y)).batch(4)
    with pytest.raises(ValueError, match="`y`: 8 labels seen by epoch 1 .* the first 12 "):
        _distiller().fit(dataset, epochs=2, verbose=0)


def test_good_labels_batch_by_batch_train_and_log_no_count():
    distiller = _distiller()
    history = distiller.fit(
        _Batches(np.arange(8) % 6), epochs=2, verbose=0,
        validation_data=_Batches(np.arange(8) % 6),
    )
    assert "bad_labels" not in history.history
    assert np.all(np.isfinite(history.history["loss"]))


def test_bad_label_count_matches_a_hand_count():
    from keras_edu.label_checks import BadLabelCount

    count = BadLabelCount(num_classes=6)
    count.update_state(np.array([0, 1, 5]))
    count.update_state(np.array([6, 2, -3, 7]))
    count.update_state(np.array([9]))
    assert float(keras.ops.convert_to_numpy(count.count)) == 4.0
    assert float(keras.ops.convert_to_numpy(count.first_bad)) == 6.0  # first ever
    count.reset_state()  # Keras's per-epoch reset leaves it alone
    assert float(keras.ops.convert_to_numpy(count.result())) == 4.0
    count.restart()
    assert float(keras.ops.convert_to_numpy(count.result())) == 0.0


# --------------------------------------------------------------- non-finite values


def test_a_nan_pixel_fails_before_the_first_step_naming_x():
    x = X.copy()
    x[5, 2] = np.nan
    distiller = _distiller()
    with pytest.raises(ValueError, match="`x` holds 1 non-finite values .* the first in example 5"):
        distiller.fit(x, np.arange(8) % 6, epochs=1, batch_size=4, verbose=0)


def test_a_nan_pixel_in_the_first_batch_of_a_dataset_names_x():
    x = X.copy()
    x[1, 0] = np.inf
    with pytest.raises(ValueError, match="`x \\(its first batch\\)` holds 1 non-finite"):
        _distiller().fit(_NaNBatches(x), epochs=1, verbose=0)


class _NaNBatches(_Batches):
    def __init__(self, x):
        super().__init__(np.arange(8) % 6)
        self.x = x

    def __getitem__(self, index):
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.x[rows], self.y[rows]


def _nan_teacher(num_classes=6, index_of_nan=0):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(num_classes)])
    kernel = keras.ops.convert_to_numpy(model.layers[0].kernel).copy()
    kernel[0, index_of_nan] = np.nan
    model.layers[0].kernel.assign(kernel)
    return model


def test_a_teacher_with_nan_logits_is_named_before_training():
    good = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6)])
    student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6)])
    distiller = keras_edu.Distiller(student, [good, _nan_teacher()])
    distiller.compile(optimizer="sgd")
    before = keras.ops.convert_to_numpy(student.layers[0].kernel).copy()
    with pytest.raises(ValueError, match="Teacher 1 \\(classes \\[0, 1, 2, 3, 4, 5\\]\\) returns non-finite logits"):
        distiller.fit(X, np.arange(8) % 6, epochs=1, batch_size=4, verbose=0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(student.layers[0].kernel), before)


def test_terminate_on_nan_names_the_non_finite_terms(caplog):
    distiller = _distiller()
    stopper = keras_edu.nonfinite.TerminateOnNaN()
    stopper.set_model(distiller)
    logs = {"loss": np.float32(np.nan), "student_loss": 0.7, "distillation_loss": np.inf}
    with caplog.at_level("ERROR", logger="keras_edu"):
        stopper.on_batch_end(3, logs)
    assert stopper.nonfinite_terms == ["distillation_loss"]
    assert distiller.stop_training
    assert "Batch 3" in caplog.text and "non-finite terms: distillation_loss" in caplog.text
    with pytest.raises(RuntimeError, match="non-finite terms: distillation_loss"):
        keras_edu.nonfinite.TerminateOnNaN(raise_error=True).on_batch_end(3, logs)
    stopper.on_batch_end(4, {"loss": 0.5})  # finite: nothing happens
    assert stopper.nonfinite_terms == ["distillation_loss"]


class _LateNaN(keras.layers.Layer):
    # Finite on the first batch (zeros), NaN on the rows of ones.
    def call(self, x):
        return keras.ops.where(keras.ops.sum(x, axis=1, keepdims=True) > 2.5, np.nan, 1.0) * x


@pytest.mark.parametrize("with_data", [False, True])
def test_terminate_on_nan_names_the_teacher_that_goes_non_finite(with_data, caplog):
    good = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6)])
    late = keras.Sequential([keras.Input((4,)), _LateNaN(), keras.layers.Dense(6)])
    x = np.concatenate([np.zeros((4, 4)), np.ones((4, 4))]).astype("float32")
    student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6)])
    distiller = keras_edu.Distiller(student, [good, late])
    distiller.compile(optimizer="sgd")
    stopper = keras_edu.nonfinite.TerminateOnNaN(data=x if with_data else None)
    with caplog.at_level("ERROR", logger="keras_edu"):
        distiller.fit(
            x, np.arange(8) % 6, epochs=3, batch_size=4, shuffle=False,
            verbose=0, callbacks=[stopper],
        )
    assert "distillation_loss" in stopper.nonfinite_terms
    assert "student_loss" not in stopper.nonfinite_terms
    assert int(keras.ops.convert_to_numpy(distiller.optimizer.iterations)) == 2
    if with_data:
        assert stopper.nonfinite_teachers == {1: 4}
        assert "Teacher 1 (classes [0, 1, 2, 3, 4, 5]) returns non-finite logits, first on example 4" in caplog.text
    else:
        assert "TerminateOnNaN(data=x)" in caplog.text


def test_find_nonfinite_teachers_scans_arrays_and_batched_datasets():
    tf = pytest.importorskip("tensorflow")
    from keras_edu.nonfinite import find_nonfinite_teachers

    good = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6)])
    late = keras.Sequential([keras.Input((4,)), _LateNaN(), keras.layers.Dense(6)])
    x = np.zeros((10, 4), "float32")
    x[7] = 1.0
    assert find_nonfinite_teachers([good, late], x, batch_size=3) == {1: 7}
    batches = tf.data.Dataset.from_tensor_slices((x, np.zeros(10))).batch(4)
    assert find_nonfinite_teachers([good, late], batches) == {1: 7}
    assert find_nonfinite_teachers([good], x) == {}


def test_the_first_batch_of_an_unbatched_dataset_is_checked_as_one_example():
    tf = pytest.importorskip("tensorflow")
    from keras_edu.nonfinite import first_batch_inputs

    dataset = tf.data.Dataset.from_tensor_slices((X, np.arange(8) % 6))
    assert first_batch_inputs(dataset, None).shape == (4,)
    assert first_batch_inputs(dataset.batch(3), None).shape == (3, 4)
    bad = _nan_teacher()
    distiller = keras_edu.Distiller(keras.Sequential([keras.Input((4,)), keras.layers.Dense(6)]), [bad])
    distiller.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="Teacher 0 .* non-finite logits"):
        distiller.fit(dataset.batch(4), epochs=1, verbose=0)
