"""Education distillation: partitions, TR blocks, graded students, grade switches."""

import json

import keras
import numpy as np
import pytest
from keras import ops

import keras_edu
from keras_edu.layers import TeachingReference

BACKEND = keras.backend.backend()


# --------------------------------------------------------------- builders


def _stage(filters, strides=1, name=None):
    return keras.Sequential(
        [
            keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
        ],
        name=name,
    )


def _graded_student(partition, input_shape=(8, 8, 1)):
    head = keras.Sequential(
        [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(partition.num_classes)],
        name="head",
    )
    stages = [_stage(4, name="s1"), _stage(8, 2, name="s2"), _stage(8, 2, name="s3")]
    return keras_edu.GradedStudent(stages, head, partition, input_shape=input_shape)


class _CallCounter(keras.layers.Layer):
    """Records the batch size of each call it *executes* (not traces)."""

    def __init__(self, counts, key, **kwargs):
        super().__init__(**kwargs)
        # A closure, not an attribute: Keras would track (copy) a dict.
        def bump(rows):
            counts.setdefault(key, []).append(int(rows))
            return np.zeros((), "float32")

        self._bump = bump

    def call(self, inputs):
        rows = ops.shape(inputs)[0]
        if BACKEND == "tensorflow":
            import tensorflow as tf

            tf.numpy_function(self._bump, [rows], Tout=tf.float32, stateful=True)
        elif BACKEND == "jax":
            import jax

            jax.debug.callback(self._bump, rows)
        else:
            self._bump(rows)
        return inputs


def _specialist(classes, input_shape=(8, 8, 1), counts=None, key=None):
    layers = [keras.Input(input_shape)]
    if counts is not None:
        layers.append(_CallCounter(counts, key))
    layers += [
        keras.layers.Conv2D(4, 3, padding="same"),
        keras.layers.BatchNormalization(),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(len(classes)),
    ]
    return keras_edu.Teacher(keras.Sequential(layers), classes=classes)


def _data(num_classes=6, per_class=12, input_shape=(8, 8, 1), seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(num_classes), per_class).astype("int32")
    x = rng.normal(size=(len(y),) + input_shape).astype("float32") + y[:, None, None, None] * 0.1
    return x, y


def _distiller(partition=None, counts=None, **kwargs):
    partition = partition or keras_edu.ClassPartition.contiguous(6, "1:1:1")
    student = _graded_student(partition)
    teachers = [
        _specialist(g, counts=counts, key=k) for k, g in enumerate(partition.groups)
    ]
    distiller = keras_edu.Distiller(student, teachers, **kwargs)
    return distiller


def _values(variables):
    return [ops.convert_to_numpy(v).copy() for v in variables]


# --------------------------------------------------------------- ClassPartition


def test_contiguous_partition_follows_the_method():
    partition = keras_edu.ClassPartition.contiguous(100, "1:1:1")
    bounds = [(g[0], g[-1] + 1) for g in partition.groups]
    assert bounds == [(0, 33), (33, 66), (66, 100)]
    assert partition.num_groups == 3
    assert keras_edu.ClassPartition.contiguous(10, (1, 2, 2)).groups == [
        [0, 1], [2, 3, 4, 5], [6, 7, 8, 9]
    ]


def test_shuffled_partition_is_seeded_and_complete():
    a = keras_edu.ClassPartition.shuffled(20, "1:1", seed=3)
    b = keras_edu.ClassPartition.shuffled(20, "1:1", seed=3)
    c = keras_edu.ClassPartition.shuffled(20, "1:1", seed=4)
    assert a == b and a != c
    assert sorted(sum(a.groups, [])) == list(range(20))
    assert [len(g) for g in a.groups] == [10, 10]


def test_group_of_is_vectorised_for_numpy_and_tensors():
    partition = keras_edu.ClassPartition.from_groups([[0, 3], [1, 4], [2, 5]])
    labels = [0, 1, 2, 3, 4, 5]
    np.testing.assert_array_equal(partition.group_of(labels), [0, 1, 2, 0, 1, 2])
    tensor = partition.group_of(ops.convert_to_tensor(np.array(labels, "int32")))
    np.testing.assert_array_equal(ops.convert_to_numpy(tensor), [0, 1, 2, 0, 1, 2])
    assert partition.classes_up_to(2) == [0, 1, 3, 4]


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: keras_edu.ClassPartition.contiguous(10, "1:0:1"), "ratios"),
        (lambda: keras_edu.ClassPartition.contiguous(10, "1;1"), "ratios"),
        (lambda: keras_edu.ClassPartition.contiguous(2, "1:1:1"), "empty"),
        (lambda: keras_edu.ClassPartition.from_groups([[0, 1], [1, 2]]), "exactly one group"),
        (lambda: keras_edu.ClassPartition.from_groups([[0], []]), r"groups\[1\]"),
        (lambda: keras_edu.ClassPartition.from_groups([[0, 2]]), "missing"),
    ],
)
def test_partition_rejects_bad_input(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_classes_up_to_rejects_bad_grade():
    partition = keras_edu.ClassPartition.contiguous(6)
    with pytest.raises(ValueError, match="grade"):
        partition.classes_up_to(4)


# --------------------------------------------------------------- TeachingReference


def test_teaching_reference_shape_and_parameter_count():
    block = TeachingReference(num_classes=33, width=64)
    out = block(np.random.rand(2, 8, 8, 16).astype("float32"))
    assert tuple(out.shape) == (2, 33)
    # conv 16*64 (no bias) + BN gamma/beta 2*64 + dense 64*33 + 33.
    expected = 16 * 64 + 2 * 64 + 64 * 33 + 33
    assert sum(int(np.prod(w.shape)) for w in block.trainable_weights) == expected


def test_teaching_reference_config_round_trip_and_bfloat16():
    block = TeachingReference(num_classes=5, width=7, name="tr")
    clone = TeachingReference.from_config(block.get_config())
    assert (clone.num_classes, clone.width, clone.name) == (5, 7, "tr")
    policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        out = TeachingReference(num_classes=3)(np.ones((1, 4, 4, 2), "float32"))
        assert "bfloat16" in str(out.dtype)
    finally:
        keras.mixed_precision.set_dtype_policy(policy)


# --------------------------------------------------------------- GradedStudent


def test_head_width_follows_the_groups():
    partition = keras_edu.ClassPartition.contiguous(6, "1:1:1")
    student = _graded_student(partition)
    widths = [student.model_for_grade(g).output_shape[-1] for g in (1, 2, 3)]
    assert widths == [2, 4, 6]


def test_graduate_is_the_target_architecture():
    partition = keras_edu.ClassPartition.contiguous(6, "1:1:1")
    student = _graded_student(partition)
    final = student.graduate()
    target = keras.Sequential(
        [keras.Input((8, 8, 1)), _stage(4), _stage(8, 2), _stage(8, 2),
         keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(6)]
    )
    assert final.count_params() == target.count_params()
    assert not any(isinstance(l, TeachingReference) for l in final._flatten_layers())
    assert final.output_shape == (None, 6)


def test_graduated_student_loads_without_keras_edu(tmp_path):
    import subprocess
    import sys

    student = _graded_student(keras_edu.ClassPartition.contiguous(6)).graduate()
    path = str(tmp_path / "student.keras")
    student.save(path)
    code = (
        "import sys, keras; m = keras.saving.load_model(sys.argv[1]); "
        "assert 'keras_edu' not in sys.modules; print(m.output_shape)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, path], capture_output=True, text=True, check=True
    )
    assert "(None, 6)" in out.stdout


def test_from_model_splits_a_functional_model():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", name="c1")(inputs)
    x = keras.layers.ReLU(name="stage1_out")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="c2")(x)
    x = keras.layers.ReLU(name="stage2_out")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(4, name="logits")(x)
    model = keras.Model(inputs, outputs)
    partition = keras_edu.ClassPartition.contiguous(4, "1:1")
    student = keras_edu.GradedStudent.from_model(
        model, split_at=["stage1_out", "stage2_out"], partition=partition
    )
    assert student.model_for_grade(1).output_shape == (None, 2)
    final = student.graduate()
    assert final.count_params() == model.count_params()
    # The split shares the trained layers: same predictions.
    x = np.random.rand(3, 8, 8, 1).astype("float32")
    np.testing.assert_allclose(
        ops.convert_to_numpy(final(x)), ops.convert_to_numpy(model(x)), atol=1e-5
    )
    with pytest.raises(ValueError, match="split_at"):
        keras_edu.GradedStudent.from_model(model, ["stage1_out"], partition)
    with pytest.raises(ValueError, match="nope"):
        keras_edu.GradedStudent.from_model(model, ["stage1_out", "nope"], partition)


def test_graded_student_rejects_bad_structure():
    partition = keras_edu.ClassPartition.contiguous(6, "1:1:1")
    head = keras.Sequential([keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(6)])
    with pytest.raises(ValueError, match="3 groups"):
        keras_edu.GradedStudent([_stage(4), _stage(8)], head, partition, (8, 8, 1))
    dense_stage = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(5)])
    with pytest.raises(ValueError, match="chain|cannot take"):
        keras_edu.GradedStudent(
            [_stage(4), dense_stage, _stage(8)], head, partition, (8, 8, 1)
        )
    wrong_head = keras.Sequential([keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(5)])
    with pytest.raises(ValueError, match="outputs 5 logits"):
        keras_edu.GradedStudent([_stage(4), _stage(8), _stage(8)], wrong_head, partition, (8, 8, 1))
    bad_reference = keras.Sequential([keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="grade 1"):
        keras_edu.GradedStudent(
            [_stage(4), _stage(8), _stage(8)], head, partition, (8, 8, 1),
            references=[bad_reference, TeachingReference(4)],
        )


# --------------------------------------------------------------- one fit(), three grades


class _Recorder(keras.callbacks.Callback):
    """Records, around each epoch, what the grade switch must preserve."""

    def __init__(self):
        super().__init__()
        self.steps, self.param_steps, self.begin, self.end = [], [], {}, {}

    def on_epoch_begin(self, epoch, logs=None):
        self.count = 0
        self.begin[epoch] = {
            "grade": self.model.grade,
            "trainable": list(self.model.trainable_variables),
            "student": list(self.model.student.trainable_variables),
            "student_values": _values(self.model.student.trainable_variables),
            "stage1": _values(self.model.graded_student.stages[0].weights),
            "iterations": int(ops.convert_to_numpy(self.model.optimizer.iterations)),
        }

    def on_train_batch_end(self, batch, logs=None):
        self.count += 1

    def on_epoch_end(self, epoch, logs=None):
        self.steps.append(self.count)
        self.param_steps.append(self.params["steps"])
        self.end[epoch] = {
            "stage1": _values(self.model.graded_student.stages[0].weights),
            "iterations": int(ops.convert_to_numpy(self.model.optimizer.iterations)),
        }


@pytest.mark.parametrize("order", ["stratified", "interleaved"])
def test_three_grades_in_one_fit(order):
    keras.utils.set_random_seed(1)
    counts = {}
    distiller = _distiller(counts=counts)
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        metrics=["accuracy"],
        jit_compile=False,  # the TF call counter is a numpy_function
    )
    x, y = _data(per_class=12)
    recorder = _Recorder()
    counts.clear()  # torch runs symbolic builds for real; count training only
    history = distiller.fit(
        x, y, epochs=5, batch_size=8, verbose=0, validation_data=(x, y),
        callbacks=[recorder, keras_edu.GradeCallback(boundaries=[2, 4], order=order)],
    )
    # Switches at the right epochs, and every epoch logs its grade.
    assert history.history["grade"] == [1, 1, 2, 2, 3]
    # Only groups 1..g are served: 24 samples per group, batches of 8.
    assert recorder.steps == [3, 3, 6, 6, 9]
    assert recorder.param_steps == [3, 3, 6, 6, 9]
    # Leave out each teacher's first call: fit's check of its logits on the
    # first batch (keras_edu.nonfinite), before training.
    counts = {k: rows[1:] for k, rows in counts.items()}
    calls = {k: len(rows) for k, rows in counts.items()}
    if order == "interleaved":
        # Exactly one teacher runs per step: the batch group's specialist.
        assert sum(calls.values()) == sum(recorder.steps)
        assert calls == {0: 3 + 3 + 3 + 3 + 3, 1: 3 + 3 + 3, 2: 3}
    else:
        # Each seen group's specialist runs once per step on its own block
        # (8 rows: 8; 4 + 4; 3 + 3 + 2), so a step is one teacher pass.
        assert calls == {0: 3 + 3 + 6 + 6 + 9, 1: 6 + 6 + 9, 2: 9}
        assert set(counts[0]) == {8, 4, 3} and set(counts[1]) == {4, 3}
        assert set(counts[2]) == {2}
        assert sum(sum(rows) for rows in counts.values()) == 8 * sum(recorder.steps)
    # The switch itself leaves surviving weights untouched, by value.
    for boundary in (2, 4):
        for before, after in zip(recorder.end[boundary - 1]["stage1"], recorder.begin[boundary]["stage1"]):
            np.testing.assert_array_equal(before, after)
        # The learning-rate clock continues across the switch.
        assert recorder.begin[boundary]["iterations"] == recorder.end[boundary - 1]["iterations"]
    # trainable_variables are exactly the current grade's.
    for epoch, state in recorder.begin.items():
        assert {id(v) for v in state["trainable"]} == {id(v) for v in state["student"]}
    # Validation reports all classes and the classes seen so far.
    assert {"val_accuracy", "val_seen_accuracy", "val_loss"} <= set(history.history)
    final = distiller.graduate()
    assert final.output_shape == (None, 6)
    assert final.count_params() == _graded_student(
        keras_edu.ClassPartition.contiguous(6)
    ).graduate().count_params()


def test_sequential_order_serves_groups_in_order():
    partition = keras_edu.ClassPartition.contiguous(6, "1:1:1")
    x, y = _data(per_class=4)
    data = keras_edu.CurriculumDataset(
        x, y, partition=partition, batch_size=4, order="sequential", grade=3
    )
    groups = [int(partition.group_of(data[i][1])[0]) for i in range(len(data))]
    assert groups == [0, 0, 1, 1, 2, 2]
    for i in range(len(data)):
        assert len(set(partition.group_of(data[i][1]).tolist())) == 1


def test_curriculum_from_tf_data_is_homogeneous():
    tf = pytest.importorskip("tensorflow")
    partition = keras_edu.ClassPartition.contiguous(6, "1:1:1")
    x, y = _data(per_class=5)
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    data = keras_edu.CurriculumDataset(
        dataset, partition=partition, batch_size=4, grade=2, order="interleaved"
    )
    assert len(data) == 2 * 3  # ceil(10 / 4) batches for each of 2 groups
    seen = []
    for i in range(len(data)):
        labels = data[i][1]
        assert len(labels) == 4  # full: the last one starts a fresh pass
        assert len(set(partition.group_of(labels).tolist())) == 1
        seen.extend(labels.tolist())
    # A whole pass over each group (5 per class), then 2 rows of the next.
    counts = np.bincount(seen, minlength=6)
    assert counts[4:].tolist() == [0, 0] and counts[:4].min() >= 5
    assert np.bincount(partition.group_of(np.array(seen))).tolist() == [12, 12]


@pytest.mark.parametrize("order", ["interleaved", "sequential"])
def test_single_group_batches_are_full(order):
    # 10 / 7 / 5 samples: with batches of 4 a short last batch per group
    # would give three batch shapes, hence three compiled steps on JAX.
    partition = keras_edu.ClassPartition.contiguous(6, "1:1:1")
    x, y = _data(per_class=5)
    keep = np.concatenate([np.arange(10), np.arange(10, 17), np.arange(20, 25)])
    data = keras_edu.CurriculumDataset(
        x[keep], y[keep], partition=partition, batch_size=4, order=order,
        grade=3, seed=0,
    )
    assert data.batches_per_group() == [3, 2, 2] and len(data) == 7
    served = [data[i] for i in range(len(data))]
    assert {len(labels) for _, labels in served} == {4}
    for group in range(3):
        rows = [
            np.asarray(batch_x).reshape(len(batch_x), -1)
            for batch_x, labels in served
            if partition.group_of(labels)[0] == group
        ]
        rows = np.concatenate(rows)
        members = x[keep][partition.group_of(y[keep]) == group].reshape(-1, 64)
        # Every sample of the group is served; repeats fill the last batch.
        assert {r.tobytes() for r in members} <= {r.tobytes() for r in rows}


def test_unchanged_grade_leaves_the_epoch_iterators_alone(monkeypatch):
    from keras_edu import _keras_internals

    scans = []
    monkeypatch.setattr(
        _keras_internals,
        "refresh_batch_counts",
        lambda iterators, count: scans.append(count),
    )
    partition = keras_edu.ClassPartition.contiguous(6, "1:1:1")
    x, y = _data(per_class=4)
    data = keras_edu.CurriculumDataset(x, y, partition=partition, batch_size=4)
    data.set_grade(1)
    assert scans == []
    data.set_grade(2)
    assert scans == [4] and len(data) == 4


def test_stratified_curriculum_from_tf_data():
    tf = pytest.importorskip("tensorflow")
    partition = keras_edu.ClassPartition.contiguous(6, "1:1:1")
    x, y = _data(per_class=6)
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    data = keras_edu.CurriculumDataset(
        dataset, partition=partition, batch_size=6, grade=3, order="stratified"
    )
    assert data.block_sizes() == (2, 2, 2) and len(data) == 6
    served = []
    for i in range(len(data)):
        labels = data[i][1]
        assert partition.group_of(labels).tolist() == [0, 0, 1, 1, 2, 2]
        served.extend(labels.tolist())
    assert sorted(served) == sorted(y.tolist())  # one pass over each group


@pytest.mark.parametrize("source", ["arrays", "tf.data"])
@pytest.mark.parametrize("order", ["stratified", "interleaved"])
def test_batch_spec_and_block_sizes_describe_every_grade(source, order):
    # What a step compiled ahead of a switch is compiled for: read without
    # drawing a batch, and true of the batches each grade then serves.
    partition = keras_edu.ClassPartition.contiguous(6, "1:1:1")
    x, y = _data(per_class=6)
    x = x.astype("float16")  # any dtype: the spec is the data's own
    if source == "tf.data":
        tf = pytest.importorskip("tensorflow")
        x, y = tf.data.Dataset.from_tensor_slices((x, y)), None
    data = keras_edu.CurriculumDataset(
        x, y, partition=partition, batch_size=6, order=order, seed=0
    )
    spec = data.batch_spec()
    assert spec == (((6, 8, 8, 1), np.dtype("float16")), ((6,), np.dtype("int32")))
    ahead = {grade: data.block_sizes(grade) for grade in (1, 2, 3)}
    for grade in (1, 2, 3):
        data.set_grade(grade)
        assert data.block_sizes() == ahead[grade]
        for batch_x, labels in (data[i] for i in range(len(data))):
            assert (batch_x.shape, batch_x.dtype) == spec[0]
            assert (labels.shape, labels.dtype) == spec[1]
    if order == "stratified":
        assert ahead == {1: (6,), 2: (3, 3), 3: (2, 2, 2)}
    else:
        assert set(ahead.values()) == {None}


def _fit_three_grades(precompile):
    keras.utils.set_random_seed(3)
    distiller = _distiller()
    distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), metrics=["accuracy"])
    x, y = _data(per_class=8)
    schedule = keras_edu.GradeCallback(
        boundaries=[1, 2], order="stratified", seed=0, precompile=precompile
    )
    history = distiller.fit(x, y, epochs=4, batch_size=6, verbose=0, callbacks=[schedule])
    return distiller, schedule, history


def test_precompile_true_is_accepted_and_compiles_nothing_ahead():
    # The background precompiler is gone (issue 16): `precompile=True`
    # warns, on every backend, and the fit trains as any other.
    with pytest.warns(DeprecationWarning, match="no longer compiles"):
        distiller, schedule, history = _fit_three_grades(True)
    assert schedule.precompile is True
    assert schedule.precompiled_grades == []
    assert history.history["grade"] == [1, 2, 3, 3]
    assert np.isfinite(history.history["loss"]).all()


def test_grade_callback_checks_precompile():
    import warnings

    for bad in ("yes", 0, 1):
        with pytest.raises(ValueError, match="must be 'auto', True or False"):
            keras_edu.GradeCallback(boundaries=[1, 2], precompile=bad)
    with pytest.warns(DeprecationWarning, match="precompile=True"):
        assert keras_edu.GradeCallback(boundaries=[1, 2], precompile=True).precompile is True
    # "auto", the default, and False accept silently and do nothing.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert keras_edu.GradeCallback(boundaries=[1, 2]).precompile == "auto"
        schedule = keras_edu.GradeCallback(boundaries=[1, 2], precompile=False)
    assert schedule.precompile is False and schedule.precompiled_grades == []


def test_carry_keeps_momentum_of_surviving_variables():
    distiller = _distiller()
    distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    x, y = _data(per_class=8)
    distiller.fit(x, y, epochs=1, batch_size=8, verbose=0)
    momentum = {v.path: ops.convert_to_numpy(v).copy() for v in distiller.optimizer.variables}
    distiller.set_grade(2, optimizer_state="carry")
    carried = {v.path: ops.convert_to_numpy(v) for v in distiller.optimizer.variables}
    shared = [p for p in carried if p in momentum and "iteration" not in p and "learning_rate" not in p]
    assert shared, "surviving variables should keep optimizer slots"
    assert any(np.abs(momentum[p]).sum() > 0 for p in shared)
    for path in shared:
        np.testing.assert_array_equal(carried[path], momentum[path])


def test_init_new_head_from_old_copies_seen_rows():
    distiller = _distiller()
    distiller.compile(optimizer="sgd")
    old = distiller.graded_student.references[0].dense
    old_kernel = ops.convert_to_numpy(old.kernel)
    distiller.set_grade(2, init_new_head_from_old=True)
    new_kernel = ops.convert_to_numpy(distiller.graded_student.references[1].dense.kernel)
    np.testing.assert_array_equal(new_kernel[:, :2], old_kernel)


def test_keras_file_saved_at_a_grade_reloads_at_that_grade(tmp_path):
    distiller = _distiller()
    distiller.compile(optimizer="sgd", metrics=["accuracy"])
    x, y = _data(per_class=4)
    distiller.fit(x, y, epochs=1, batch_size=8, verbose=0)
    distiller.set_grade(2)
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    restored = keras.saving.load_model(path)
    assert restored.grade == 2
    assert restored.student.output_shape == (None, 4)
    np.testing.assert_allclose(
        ops.convert_to_numpy(restored.predict(x, verbose=0)),
        ops.convert_to_numpy(distiller.predict(x, verbose=0)),
        atol=1e-5,
    )


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, at_epoch):
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at_epoch:
            raise RuntimeError("interrupted")


def test_backup_and_restore_resumes_mid_grade(tmp_path):
    keras.utils.set_random_seed(2)
    x, y = _data(per_class=8)
    backup_dir = str(tmp_path / "backup")
    first = _distiller()
    first.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    recorder = _Recorder()
    with pytest.raises(RuntimeError, match="interrupted"):
        first.fit(
            x, y, epochs=5, batch_size=8, verbose=0,
            callbacks=[
                keras_edu.GradeCallback(boundaries=[1, 4]),
                keras.callbacks.BackupAndRestore(backup_dir),
                recorder,
                _Interrupt(at_epoch=3),
            ],
        )
    assert first.grade == 2
    # The backup of epoch 2 holds these values (nothing trained since).
    saved = _values(first.student.trainable_variables)
    with open(f"{backup_dir}/training_metadata.json") as f:
        assert json.load(f)["epoch"] == 3  # the epoch to resume at

    second = _distiller()
    second.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    resumed = _Recorder()
    history = second.fit(
        x, y, epochs=5, batch_size=8, verbose=0,
        callbacks=[
            keras_edu.GradeCallback(boundaries=[1, 4]),
            keras.callbacks.BackupAndRestore(backup_dir),
            resumed,
        ],
    )
    assert history.history["grade"] == [2, 3]
    state = resumed.begin[3]
    assert state["grade"] == 2
    assert state["iterations"] == recorder.end[2]["iterations"]
    assert len(saved) == len(state["student_values"])
    for a, b in zip(saved, state["student_values"]):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize(
    "boundaries, match",
    [([2, 1], "strictly increasing"), ([0, 2], ">= 1"), ([1.5, 2], "integer")],
)
def test_grade_callback_rejects_bad_boundaries(boundaries, match):
    with pytest.raises(ValueError, match=match):
        keras_edu.GradeCallback(boundaries=boundaries)


def test_grade_callback_checks_schedule_against_fit():
    distiller = _distiller()
    distiller.compile(optimizer="sgd")
    x, y = _data(per_class=4)
    with pytest.raises(ValueError, match="< epochs"):
        distiller.fit(x, y, epochs=3, verbose=0, callbacks=[keras_edu.GradeCallback([1, 3])])
    with pytest.raises(ValueError, match="needs 2 epochs"):
        distiller.fit(x, y, epochs=3, verbose=0, callbacks=[keras_edu.GradeCallback([1])])


def test_grade_callback_needs_a_graded_student():
    student = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(6)])
    teacher = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(6)])
    distiller = keras_edu.Distiller(student, [teacher])
    distiller.compile(optimizer="sgd")
    x, y = _data(per_class=2)
    with pytest.raises(ValueError, match="GradedStudent"):
        distiller.fit(x, y, epochs=3, verbose=0, callbacks=[keras_edu.GradeCallback([1, 2])])


def test_specialist_must_cover_its_group():
    partition = keras_edu.ClassPartition.contiguous(6, "1:1:1")
    teachers = [_specialist([0, 1]), _specialist([2, 3, 4]), _specialist([5])]
    with pytest.raises(ValueError, match=r"teachers\[1\]"):
        keras_edu.Distiller(_graded_student(partition), teachers)


def _numpy_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _numpy_graded_loss(distiller, x, y, alpha=0.3, temperature=4.0):
    """The method's loss per example, by hand: CE over the seen classes plus
    T^2 KL(teacher of the row's group || student at that group's columns)."""
    partition = distiller.graded_student.partition
    seen = partition.classes_up_to(distiller.grade)
    z = ops.convert_to_numpy(distiller.student(x, training=False)).astype("float64")
    column = {c: i for i, c in enumerate(seen)}
    log_p = np.log(_numpy_softmax(z))
    cross_entropy = -log_p[np.arange(len(y)), [column[c] for c in y]]
    kd = np.zeros(len(y))
    for row, label in enumerate(y):
        group = int(partition.group_of(np.array([label]))[0])
        teacher = distiller.teachers[group].model
        t = ops.convert_to_numpy(teacher(x[row : row + 1], training=False)).astype("float64")
        cols = [column[c] for c in partition.groups[group]]
        p = _numpy_softmax(t / temperature)
        q = _numpy_softmax(z[row : row + 1, cols] / temperature)
        kd[row] = temperature**2 * np.sum(p * (np.log(p) - np.log(q)))
    return alpha * cross_entropy.mean() + (1 - alpha) * kd.mean()


@pytest.mark.parametrize("layout", ["one_group", "stratified"])
def test_graded_loss_matches_numpy_reference(layout):
    keras.utils.set_random_seed(3)
    distiller = _distiller()
    distiller.set_grade(3)
    x, y = _data(per_class=3, seed=2)
    if layout == "one_group":
        keep = y >= 4  # a batch of group 3 only: its specialist teaches
        x, y = x[keep], y[keep]
    else:
        # Blocks of groups 1, 2, 3 in that order, as CurriculumDataset lays
        # out a stratified batch; each specialist distils its block only.
        order = np.argsort(y, kind="stable")
        x, y = x[order], y[order]
        distiller._rows_per_group = (6, 6, 6)
    logits = distiller.student(x, training=False)
    loss = distiller.compute_loss(x, ops.convert_to_tensor(y), logits, training=True)
    np.testing.assert_allclose(
        float(ops.convert_to_numpy(loss)), _numpy_graded_loss(distiller, x, y), rtol=1e-5
    )


def test_stratified_batches_hold_every_seen_group_in_blocks():
    partition = keras_edu.ClassPartition.contiguous(6, "1:1:1")
    x, y = _data(per_class=5)  # 10 samples per group
    y_kept = np.concatenate([y[y < 4], y[y >= 4][:4]])  # group 3 has 4 samples
    x_kept = np.concatenate([x[y < 4], x[y >= 4][:4]])
    data = keras_edu.CurriculumDataset(
        x_kept, y_kept, partition=partition, batch_size=6, order="stratified", seed=0
    )
    assert data.block_sizes() == (6,) and len(data) == 2  # ceil(10 / 6)
    data.set_grade(3)
    # 10 : 10 : 4 of 6 rows -> 2.5, 2.5, 1.0 -> largest remainders first.
    assert data.block_sizes() == (3, 2, 1)
    assert len(data) == 4  # ceil(24 / 6)
    served = []
    for i in range(len(data)):
        _, labels = data[i]
        assert len(labels) == 6  # every batch is full
        groups = partition.group_of(labels).tolist()
        assert groups == [0, 0, 0, 1, 1, 2]
        served.extend(labels.tolist())
    # Group 1's ten samples are served 12 times in the epoch: all ten, then
    # two of a fresh pass; groups 2 and 3 are served 8 and 4 times.
    assert set(y_kept[y_kept < 2].tolist()) <= set(served)
    counts = np.bincount(partition.group_of(np.array(served)), minlength=3)
    assert counts.tolist() == [12, 8, 4]


def test_stratified_batch_size_must_fit_the_groups():
    partition = keras_edu.ClassPartition.contiguous(6, "1:1:1")
    x, y = _data(per_class=4)
    # Refused at construction, not at the grade-3 boundary in the middle
    # of `fit`: the last grade's batches need one row of each of 3 groups.
    with pytest.raises(ValueError, match="batch_size"):
        keras_edu.CurriculumDataset(x, y, partition=partition, batch_size=2, grade=1)
    keras_edu.CurriculumDataset(
        x, y, partition=partition, batch_size=2, order="interleaved"
    )


def test_replay_weight_weighs_earlier_groups_and_keeps_the_mean_weight_one():
    partition = keras_edu.ClassPartition.contiguous(6, "1:1:1")
    x, y = _data(per_class=5)
    y_kept = np.concatenate([y[y < 4], y[y >= 4][:4]])  # 10 : 10 : 4 samples
    x_kept = np.concatenate([x[y < 4], x[y >= 4][:4]])
    data = keras_edu.CurriculumDataset(
        x_kept, y_kept, partition=partition, batch_size=6, seed=0, replay_weight=2.0
    )
    assert len(data.batch_spec()) == 3
    _, _, weights = data[0]
    np.testing.assert_array_equal(weights, np.ones(6, "float32"))  # grade 1
    # Grade 2: 10 replayed, 10 new; scale 20 / (2 * 10 + 10).
    data.set_grade(2)
    _, labels, weights = data[0]
    expected = np.where(partition.group_of(labels) == 0, 4 / 3, 2 / 3)
    np.testing.assert_allclose(weights, expected, rtol=1e-6)
    # Grade 3: 20 replayed, 4 new; scale 24 / (2 * 20 + 4). Blocks 3, 2, 1.
    data.set_grade(3)
    _, labels, weights = data[0]
    np.testing.assert_allclose(
        weights, [48 / 44] * 5 + [24 / 44], rtol=1e-6
    )
    # Over the grade's samples the weights average 1.
    assert (20 * 48 / 44 + 4 * 24 / 44) / 24 == pytest.approx(1.0)
    # The default serves (x, y) pairs, as before.
    plain = keras_edu.CurriculumDataset(x_kept, y_kept, partition=partition, batch_size=6)
    assert len(plain[0]) == 2 and len(plain.batch_spec()) == 2


@pytest.mark.parametrize("weight", [0, -1.0, "2", float("nan")])
def test_replay_weight_must_be_positive(weight):
    partition = keras_edu.ClassPartition.contiguous(6, "1:1:1")
    x, y = _data(per_class=4)
    with pytest.raises(ValueError, match="replay_weight"):
        keras_edu.CurriculumDataset(x, y, partition=partition, batch_size=6, replay_weight=weight)
    with pytest.raises(ValueError, match="replay_weight"):
        keras_edu.GradeCallback([1, 2], replay_weight=weight)


def test_grade_callback_gives_fit_its_curriculum_settings():
    x, y = _data(per_class=8)
    seen = []

    class _Curriculum(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            data = self.model.curriculum
            seen.append((data.order, data.replay_weight, len(data[0])))

    distiller = _distiller()
    distiller.compile(optimizer="sgd")
    grades = keras_edu.GradeCallback([1, 2], order="sequential", seed=3, replay_weight=0.5)
    history = distiller.fit(
        x, y, epochs=3, batch_size=8, verbose=0, callbacks=[grades, _Curriculum()]
    )
    assert seen == [("sequential", 0.5, 3)] * 3
    assert np.isfinite(history.history["loss"]).all()
    # A later fit without the callback builds the default curriculum.
    distiller.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[_Curriculum()])
    assert seen[-1] == ("stratified", 1.0, 2)


def test_a_weights_file_records_its_grade_and_loads_into_that_grade(tmp_path):
    path = str(tmp_path / "graded.weights.h5")
    saved = _distiller(grade=2)
    saved.save_weights(path)
    fresh = _distiller()
    assert fresh.grade == 1
    fresh.load_weights(path)
    assert fresh.grade == 2
    for a, b in zip(_values(saved.student.weights), _values(fresh.student.weights)):
        np.testing.assert_array_equal(a, b)
    # A file written by a plain keras.Model records no grade.
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    plain.save_weights(str(tmp_path / "plain.weights.h5"))
    from keras_edu import grade_switch

    assert grade_switch.recorded_grade(str(tmp_path / "plain.weights.h5")) is None


# --------------------------------------------------------------- kills at a grade switch


class _StateAtBegin(keras.callbacks.Callback):
    """The student's weights, the grade and the step count as an epoch begins."""

    def __init__(self):
        super().__init__()
        self.state = {}

    def on_epoch_begin(self, epoch, logs=None):
        self.state[epoch] = {
            "grade": self.model.grade,
            "weights": _values(self.model.student.weights),
            "iterations": int(ops.convert_to_numpy(self.model.optimizer.iterations)),
            "optimizer": len(self.model.optimizer.variables),
        }


def _kill_switch_at(point, monkeypatch):
    """Makes the first grade switch of a fit raise at `point`."""
    from keras_edu import grade_switch

    distiller_class = keras_edu.Distiller

    def after(name):
        # Grades switch only inside the test's `fit`.
        original = getattr(grade_switch, name)

        def killed(*args, **kwargs):
            original(*args, **kwargs)
            raise RuntimeError(f"killed after {name}")

        monkeypatch.setattr(grade_switch, name, killed)

    if point == "decided":
        original = distiller_class.set_grade

        def killed(self, grade, *args, **kwargs):
            if self.curriculum is not None and grade != self.grade:
                raise RuntimeError("killed as the callback decided to grow")
            return original(self, grade, *args, **kwargs)

        monkeypatch.setattr(distiller_class, "set_grade", killed)
    elif point == "graph_built":
        after("replace_student")
    elif point == "optimizer_rebuilt":
        after("rebuild_optimizer")


class _KillBeforeFirstStep(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("killed before the first step of the grade")


@pytest.mark.parametrize(
    "point", ["decided", "graph_built", "optimizer_rebuilt", "before_first_step"]
)
def test_a_kill_at_any_point_of_a_grade_switch_resumes_like_an_uninterrupted_run(
    point, tmp_path, monkeypatch
):
    x, y = _data(per_class=8)
    boundaries, switch = [2, 3], 2

    def run(callbacks):
        keras.utils.set_random_seed(4)
        distiller = _distiller()
        distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
        probe = _StateAtBegin()
        distiller.fit(
            x, y, epochs=4, batch_size=8, verbose=0,
            callbacks=[keras_edu.GradeCallback(boundaries, seed=1), *callbacks, probe],
        )
        return distiller, probe

    _, reference = run([])
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with monkeypatch.context() as patch:
        if point == "before_first_step":
            kill = [backup, _KillBeforeFirstStep(switch)]
        else:
            _kill_switch_at(point, patch)
            kill = [backup]
        with pytest.raises(RuntimeError, match="killed"):
            run(kill)
    resumed_distiller, resumed = run([keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))])
    # The resumed fit starts at the switch epoch, in the new grade, with the
    # uninterrupted run's weights and step count at that epoch.
    assert min(resumed.state) == switch
    expected, got = reference.state[switch], resumed.state[switch]
    assert got["grade"] == expected["grade"] == 2
    assert got["iterations"] == expected["iterations"]
    assert got["optimizer"] == expected["optimizer"]
    assert len(got["weights"]) == len(expected["weights"])
    for a, b in zip(expected["weights"], got["weights"]):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert resumed_distiller.grade == 3


def test_a_checkpoint_write_killed_mid_curriculum_leaves_the_previous_one_loadable(
    tmp_path, monkeypatch
):
    from keras.src.saving import saving_lib

    x, y = _data(per_class=4)
    distiller = _distiller()
    distiller.compile(optimizer="sgd")
    original = saving_lib._save_model_to_fileobj
    calls = []

    def dies_on_the_third_write(model, fileobj, weights_format):
        calls.append(1)
        if len(calls) == 3:
            fileobj.write(b"PK\x03\x04 half a zip")
            raise OSError("killed while writing")
        return original(model, fileobj, weights_format)

    monkeypatch.setattr(saving_lib, "_save_model_to_fileobj", dies_on_the_third_write)
    pattern = str(tmp_path / "distiller-{epoch:02d}.keras")
    with pytest.raises(OSError, match="killed while writing"):
        distiller.fit(
            x, y, epochs=4, batch_size=8, verbose=0,
            callbacks=[keras_edu.GradeCallback([1, 2]), keras.callbacks.ModelCheckpoint(pattern)],
        )
    # Epoch 2's checkpoint (grade 2, written after the first switch) loads.
    restored = keras.saving.load_model(str(tmp_path / "distiller-02.keras"))
    assert restored.grade == 2
    with pytest.raises(Exception):
        keras.saving.load_model(str(tmp_path / "distiller-03.keras"))
