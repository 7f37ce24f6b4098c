"""AMTML-KD wired into `keras_edu.Distiller` (`keras_edu.losses.AMTML`).

One step's loss against a NumPy reference, gradients, saving, heterogeneous
teachers, feature taps (one student forward per step), logs, errors, and
AMTML inside education distillation.
"""

import keras
import numpy as np
import pytest
from test_amtml_terms import np_angles
from test_amtml_terms import np_distances
from test_amtml_terms import np_hint
from test_amtml_terms import np_kl
from test_amtml_terms import np_smooth_l1
from test_amtml_terms import np_softmax
from test_education import _CallCounter

import keras_edu
from keras_edu.layers import HintRegressor
from keras_edu.layers import TeacherImportance
from helpers import to_numpy

BACKEND = keras.backend.backend()
INPUT_SHAPE = (8, 8, 2)
NUM_CLASSES = 5
# The TF call counter is a `numpy_function`, which XLA cannot compile.
JIT = False if BACKEND == "tensorflow" else "auto"


# --------------------------------------------------------------------------
# Models and data.
# --------------------------------------------------------------------------


def conv(filters, name, strides=1):
    return keras.layers.Conv2D(
        filters, 3, strides=strides, padding="same", activation="relu", name=name
    )


def student_model(counts=None, name="student"):
    """c1: 8x8x4, c2: 4x4x6 (the last feature map), then logits."""
    inputs = keras.Input(INPUT_SHAPE)
    x = _CallCounter(counts, "student")(inputs) if counts is not None else inputs
    x = conv(4, "c1")(x)
    x = conv(6, "c2", strides=2)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES, name="logits")(x), name=name)


def teacher_models(counts=None):
    """Three architectures: two CNNs of different widths and depths, an MLP."""

    def counted(x, key):
        return _CallCounter(counts, key)(x) if counts is not None else x

    inputs = keras.Input(INPUT_SHAPE)
    x = conv(8, "t_a")(counted(inputs, 0))
    x = conv(8, "t_b", strides=2)(x)  # 4x4x8
    x = keras.layers.GlobalMaxPooling2D()(x)
    deep = keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(x), name="deep")

    inputs = keras.Input(INPUT_SHAPE)
    x = conv(5, "t_a")(counted(inputs, 1))  # 8x8x5
    x = keras.layers.GlobalAveragePooling2D()(x)
    wide = keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(x), name="wide")

    layers = [keras.Input(INPUT_SHAPE)]
    if counts is not None:
        layers.append(_CallCounter(counts, 2))
    layers += [keras.layers.Flatten(), keras.layers.Dense(16, activation="relu"),
               keras.layers.Dense(NUM_CLASSES)]
    mlp = keras.Sequential(layers, name="mlp")
    # The wide teacher lists its classes in reverse order.
    return [
        keras_edu.Teacher(deep),
        keras_edu.Teacher(wide, classes=[4, 3, 2, 1, 0]),
        keras_edu.Teacher(mlp),
    ]


# Student 8x8 -> teacher 4x4 (student pooled), student 4x4 -> teacher 8x8
# (teacher pooled), and same sizes.
HINTS = [("c1", 0, "t_b"), ("c2", 1, "t_a"), ("c1", 1, "t_a")]


def data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n,) + INPUT_SHAPE).astype("float32")
    y = rng.integers(0, NUM_CLASSES, size=(n,))
    return x, y


def make_distiller(counts=None, hints=HINTS, **loss_kwargs):
    loss_kwargs.setdefault("temperature", 5.0)
    loss = keras_edu.losses.AMTML(hints=hints, **loss_kwargs)
    distiller = keras_edu.Distiller(
        student_model(counts), teacher_models(counts), alpha=0.3, loss=loss
    )
    # Weights far from uniform, so the mixture is tested.
    rng = np.random.default_rng(5)
    importance = distiller.teacher_importance
    importance.theta.assign(rng.normal(size=importance.theta.shape).astype("float32"))
    importance.w.assign(rng.normal(size=importance.w.shape).astype("float32"))
    return distiller


def tap(model, name, x):
    return to_numpy(keras.Model(model.input, model.get_layer(name).output)(x))


# --------------------------------------------------------------------------
# NumPy reference of METHOD.md section 2 (float64).
# --------------------------------------------------------------------------


def reference(distiller, x, y, y_pred, distance_weight):
    amtml = distiller.distillation_term
    t = amtml.temperature
    z = to_numpy(y_pred["logits"]).astype("float64")
    feats = {k: to_numpy(v).astype("float64") for k, v in y_pred["features"].items()}
    teachers = []
    for teacher in distiller.teachers:
        logits = to_numpy(teacher.model(x, training=False)).astype("float64")
        order = [teacher.classes.index(c) for c in range(NUM_CLASSES)]
        teachers.append(logits[:, order])
    theta = to_numpy(distiller.teacher_importance.theta).astype("float64")
    w = to_numpy(distiller.teacher_importance.w).astype("float64")
    beta = feats["c2"].max(axis=(1, 2))  # max pooling of the last map
    a = np_softmax(beta @ (theta * w).T)
    p = sum(a[:, k : k + 1] * np_softmax(teachers[k] / t) for k in range(3))
    q = np_softmax(z / t)
    kd = np.mean(t**2 * np_kl(p, q))
    hint = 0.0
    for index, (s_layer, k, t_layer) in enumerate(HINTS):
        kernel = to_numpy(distiller.hint_regressors[index].kernel).astype("float64")
        teacher_map = tap(distiller.teachers[k].model, t_layer, x).astype("float64")
        hint += np.mean(np_hint(teacher_map, feats[s_layer] @ kernel))
    angle = np_smooth_l1(np_angles(q), np_angles(p))
    distance = np_smooth_l1(np_distances(q), np_distances(p))
    log_q = z - z.max(-1, keepdims=True)
    log_q = log_q - np.log(np.exp(log_q).sum(-1, keepdims=True))
    ce = -np.mean(log_q[np.arange(len(y)), y])
    l2 = 0.1 * (np.sum(theta**2) + np.sum(w**2))
    parts = {
        "student_loss": ce, "kd_loss": kd, "hint_loss": hint,
        "angle_loss": angle, "distance_loss": distance, "l2_loss": l2,
    }
    total = 0.3 * ce + 0.7 * kd + hint + angle + distance_weight * distance + l2
    return total, parts, a


# --------------------------------------------------------------------------
# Tests.
# --------------------------------------------------------------------------


def test_one_step_matches_numpy_and_trains_theta_w_and_regressors():
    # One compiled training step (one batch): its logs are computed before
    # the update, so they must equal the reference at the initial weights.
    distiller = make_distiller(distance_weight=1.0)
    x, y = data()
    y_pred = distiller(x, training=True)
    assert set(y_pred) == {"logits", "features"}
    assert set(y_pred["features"]) == {"c1", "c2"}
    total, parts, weights = reference(distiller, x, y, y_pred, distance_weight=1.0)
    assert parts["hint_loss"] > 0.05 and parts["angle_loss"] > 1e-3
    assert np.ptp(weights) > 0.05  # far from uniform: the mixture is tested
    before = {id(v): to_numpy(v).copy() for v in distiller.variables}
    distiller.compile(optimizer=keras.optimizers.SGD(0.5))
    history = distiller.fit(x, y, epochs=1, batch_size=len(y), verbose=0)
    logs = {k: v[0] for k, v in history.history.items()}
    np.testing.assert_allclose(logs["loss"], total, rtol=1e-4)
    for key, value in parts.items():
        np.testing.assert_allclose(logs[key], value, rtol=1e-4, atol=1e-6, err_msg=key)
    for k in range(3):
        np.testing.assert_allclose(
            logs[f"teacher_{k}_weight"], weights[:, k].mean(), rtol=1e-4
        )
    # Gradients reached theta, w and every regressor, and no teacher.
    trainable = {v.path for v in distiller.trainable_variables}
    assert {"teacher_importance/theta", "teacher_importance/w"} <= trainable
    assert {f"hint_regressor_{i}/kernel" for i in range(3)} <= trainable
    for layer in [distiller.teacher_importance, *distiller.hint_regressors]:
        for v in layer.trainable_variables:
            assert not np.array_equal(before[id(v)], to_numpy(v)), v.path
    for teacher in distiller.teachers:
        for v in teacher.model.weights:
            np.testing.assert_array_equal(before[id(v)], to_numpy(v), err_msg=v.path)
    # Neither the layers nor their weights belong to the student.
    student_layers = {id(l) for l in distiller.student._flatten_layers()}
    assert id(distiller.teacher_importance) not in student_layers
    assert not any(id(r) in student_layers for r in distiller.hint_regressors)
    assert not any(
        isinstance(l, (TeacherImportance, HintRegressor))
        for l in distiller.graduate()._flatten_layers()
    )


def test_compute_loss_by_hand_and_alpha_is_the_cross_entropy_weight():
    x, y = data()
    distiller = make_distiller(hints=[], angle_weight=0.0, l2=0.0)
    # Logits without features: the features come from an inference pass.
    logits = distiller(x)
    loss = float(to_numpy(distiller.compute_loss(x, y, logits, training=True)))
    ce = float(to_numpy(distiller.student_loss_tracker.result()))
    kd = float(to_numpy(distiller.amtml_loss_trackers["kd_loss"].result()))
    np.testing.assert_allclose(loss, 0.3 * ce + 0.7 * kd, rtol=1e-5)
    assert list(distiller.amtml_loss_trackers) == ["kd_loss"]


def test_one_forward_per_step_logs_and_evaluate_runs_the_student_alone():
    counts = {}
    distiller = make_distiller(counts=counts)
    distiller.compile(optimizer="adam", metrics=["accuracy"], jit_compile=JIT)
    x, y = data(48)
    # The first fit also builds the metrics, which torch does with one real
    # inference pass of the student; count the second.
    distiller.fit(x, y, epochs=1, batch_size=16, verbose=0)
    counts.clear()
    history = distiller.fit(x, y, epochs=1, batch_size=16, verbose=0)
    # 3 steps of 16 rows: the logits and every tapped map come from one pass
    # of the student; each teacher (tapped or not) runs once per step, after
    # fit's check of its logits on the first batch (keras_edu.nonfinite).
    assert counts == {"student": [16] * 3, 0: [16] * 4, 1: [16] * 4, 2: [16] * 4}
    assert set(history.history) == {
        "loss", "accuracy", "student_loss", "kd_loss", "hint_loss", "angle_loss",
        "l2_loss", "teacher_0_weight", "teacher_1_weight", "teacher_2_weight",
    }
    mean_weights = [history.history[f"teacher_{k}_weight"][0] for k in range(3)]
    np.testing.assert_allclose(sum(mean_weights), 1.0, rtol=1e-5)
    counts.clear()
    z = distiller.predict(x, batch_size=16, verbose=0)
    logs = distiller.evaluate(x, y, batch_size=16, return_dict=True, verbose=0)
    assert counts == {"student": [16] * 6}  # no teacher outside training
    assert set(logs) == {"loss", "accuracy"}
    np.testing.assert_allclose(z, to_numpy(distiller.student(x)), rtol=1e-5, atol=1e-6)
    log_q = z - z.max(-1, keepdims=True)
    log_q -= np.log(np.exp(log_q).sum(-1, keepdims=True))
    np.testing.assert_allclose(
        logs["loss"], -np.mean(log_q[np.arange(len(y)), y]), rtol=1e-5
    )


def test_keras_file_round_trip_keeps_theta_w_and_regressors(tmp_path):
    distiller = make_distiller(distance_weight=0.5)
    for i, regressor in enumerate(distiller.hint_regressors):
        regressor.kernel.assign(regressor.kernel * (i + 2.0))
    path = str(tmp_path / "amtml.keras")
    distiller.save(path)
    loaded = keras.saving.load_model(path)
    amtml = loaded.distillation_term
    assert isinstance(amtml, keras_edu.losses.AMTML)
    assert amtml.get_config() == distiller.distillation_term.get_config()
    assert amtml.hints == tuple(HINTS) and amtml.distance_weight == 0.5
    pairs = [(distiller.teacher_importance, loaded.teacher_importance)]
    pairs += list(zip(distiller.hint_regressors, loaded.hint_regressors))
    assert len(pairs) == 4
    for old, new in pairs:
        for a, b in zip(old.weights, new.weights, strict=True):
            assert a.path == b.path
            np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    x, _ = data()
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), distiller.predict(x, verbose=0), rtol=1e-6
    )
    # The student alone stays a plain model of the same size.
    assert loaded.student.count_params() == distiller.student.count_params()


@pytest.mark.parametrize("which", ["student", "teacher"])
def test_subclassed_model_with_hints_raises(which):
    class Subclassed(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = conv(4, "c1")
            self.pool = keras.layers.GlobalAveragePooling2D()
            self.dense = keras.layers.Dense(NUM_CLASSES)

        def call(self, x):
            return self.dense(self.pool(self.conv(x)))

    model = Subclassed()
    model(np.zeros((1,) + INPUT_SHAPE, "float32"))
    student, teachers = student_model(), teacher_models()
    if which == "student":
        student = model
    else:
        teachers[0] = keras_edu.Teacher(model, classes=list(range(NUM_CLASSES)))
    loss = keras_edu.losses.AMTML(hints=[("c1", 0, "c1")])
    with pytest.raises(ValueError, match="subclassed.*functional|expose the features"):
        keras_edu.Distiller(student, teachers, loss=loss)


@pytest.mark.parametrize(
    "hints, match",
    [
        ([("c1", 3, "t_a")], r"teachers\[3\]"),
        ([("nope", 0, "t_a")], "no layer named 'nope'"),
        ([("c1", 0, "nope")], r"teachers\[0\].*no layer named 'nope'"),
        ([("c1", 0)], r"hints\[0\]"),
    ],
)
def test_bad_hints(hints, match):
    with pytest.raises(ValueError, match=match):
        keras_edu.Distiller(
            student_model(), teacher_models(),
            loss=keras_edu.losses.AMTML(hints=hints),
        )


def test_spatial_sizes_that_pooling_cannot_reconcile():
    # The student map is 3x3, the teacher's 4x4: smaller, not a factor.
    inputs = keras.Input((6, 6, 2))
    x = conv(4, "c1", strides=2)(inputs)  # 3x3
    x = keras.layers.GlobalAveragePooling2D()(x)
    student = keras.Model(inputs, keras.layers.Dense(3)(x))
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, name="t_map")(inputs)  # 4x4
    x = keras.layers.GlobalAveragePooling2D()(x)
    teacher = keras.Model(inputs, keras.layers.Dense(3)(x))
    loss = keras_edu.losses.AMTML(hints=[("c1", 0, "t_map")])
    with pytest.raises(ValueError, match=r"hints\[0\].*cannot be reconciled"):
        keras_edu.Distiller(student, [teacher], loss=loss)


def test_amtml_needs_teachers_of_the_same_classes():
    teachers = teacher_models()
    teachers[2] = keras_edu.Teacher(
        keras.Sequential([keras.Input(INPUT_SHAPE), keras.layers.Flatten(),
                          keras.layers.Dense(2)]),
        classes=[0, 1],
    )
    with pytest.raises(ValueError, match="generalists"):
        keras_edu.Distiller(
            student_model(), teachers, loss=keras_edu.losses.AMTML()
        )


def test_mixed_bfloat16_loss_is_float32(edu_mixed_bfloat16_policy):
    distiller = make_distiller(hints=HINTS[:1])
    x, y = data()
    y_pred = distiller(x, training=True)
    assert keras.backend.standardize_dtype(y_pred["logits"].dtype) == "bfloat16"
    loss = distiller.compute_loss(x, y, y_pred, training=True)
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    assert np.isfinite(to_numpy(loss))


def test_amtml_config_round_trip_and_argument_checks():
    loss = keras_edu.losses.AMTML(
        hints=[["a", 1, "b"]], angle_weight=0.5, distance_weight=2.0,
        pooling="average", stop_gradient=False, l2=0.0, temperature=3.0,
    )
    clone = keras_edu.losses.AMTML.from_config(loss.get_config())
    assert clone.get_config() == loss.get_config()
    assert clone.hints == (("a", 1, "b"),)
    assert clone.log_names == ["kd_loss", "hint_loss", "angle_loss", "distance_loss"]
    for kwargs in ({"pooling": "min"}, {"angle_weight": -1.0}, {"temperature": 0.0}):
        with pytest.raises(ValueError):
            keras_edu.losses.AMTML(**kwargs)


# --------------------------------------------------------------------------
# Inside education distillation.
# --------------------------------------------------------------------------


def _stage(filters, strides, name):
    return keras.Sequential(
        [keras.layers.Conv2D(filters, 3, strides=strides, padding="same",
                             activation="relu")],
        name=name,
    )


def _graded(partition):
    head = keras.Sequential(
        [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(partition.num_classes)],
        name="head",
    )
    stages = [_stage(4, 1, "s1"), _stage(8, 2, "s2")]
    return keras_edu.GradedStudent(stages, head, partition, input_shape=INPUT_SHAPE)


def _specialist(classes, width, name):
    inputs = keras.Input(INPUT_SHAPE)
    x = conv(width, "t_map")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(len(classes))(x), name=name)
    return keras_edu.Teacher(model, classes=classes)


def test_education_with_one_teacher_per_group_equals_plain_kd():
    # One teacher per group: the mixture is that teacher's target, so AMTML
    # without its other terms is the default KD, in both batch layouts.
    partition = keras_edu.ClassPartition.contiguous(4, "1:1")
    teachers = [_specialist(g, 4, f"t{k}") for k, g in enumerate(partition.groups)]
    student = _graded(partition)
    plain = keras_edu.Distiller(student, teachers, temperature=3.0, grade=2)
    amtml = keras_edu.Distiller(
        student, teachers, temperature=3.0, grade=2,
        loss=keras_edu.losses.AMTML(angle_weight=0.0, l2=0.0),
    )
    x, _ = data(8)
    for blocks, y in [(None, np.full(8, 3)), ((4, 4), np.array([0, 1] * 2 + [2, 3] * 2))]:
        plain._rows_per_group = amtml._rows_per_group = blocks
        z = plain.student(x, training=False)
        expected = plain.compute_loss(x, y, z, training=True)
        got = amtml.compute_loss(x, y, amtml(x, training=False), training=True)
        np.testing.assert_allclose(to_numpy(got), to_numpy(expected), rtol=1e-5)


def test_education_with_several_teachers_per_group(tmp_path):
    keras.utils.set_random_seed(3)
    partition = keras_edu.ClassPartition.contiguous(4, "1:1")
    g1, g2 = partition.groups
    teachers = [
        _specialist(g1, 4, "a"), _specialist(g1, 6, "b"),  # group 1: two
        _specialist(g2, 4, "c"),
        _specialist(list(range(4)), 5, "d"),  # a generalist: in both groups
    ]
    # s1 (8x8x4) learns from the generalist at every grade; s2 (4x4x8)
    # from specialist b, which teaches group 1 only.
    loss = keras_edu.losses.AMTML(hints=[("s1", 3, "t_map"), ("s2", 1, "t_map")])
    distiller = keras_edu.Distiller(_graded(partition), teachers, loss=loss)
    assert distiller.teacher_importance.name == "teacher_importance_grade1"
    assert distiller.teacher_importance.theta.shape == (4, 4)  # beta: s1's 4 channels
    assert [r.name for r in distiller.hint_regressors] == ["hint_regressor_0"]
    distiller.compile(optimizer="adam", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32,) + INPUT_SHAPE).astype("float32")
    y = np.repeat(np.arange(4), 8)
    history = distiller.fit(
        x, y, epochs=2, batch_size=8, verbose=0,
        callbacks=[keras_edu.GradeCallback(boundaries=[1])],
    )
    logs = history.history
    assert logs["grade"] == [1, 2]
    assert distiller.teacher_importance.name == "teacher_importance_grade2"
    assert distiller.teacher_importance.theta.shape == (4, 8)  # beta: s2
    assert [r.name for r in distiller.hint_regressors] == [
        "hint_regressor_0", "hint_regressor_1"
    ]
    # Grade 1 (group 1: a, b, d) then grade 2 (group 1: a, b, d;
    # group 2: c, d); a teacher's weight is averaged over the rows it teaches.
    np.testing.assert_allclose(logs["teacher_2_weight"][0], 0.0)
    assert logs["teacher_2_weight"][1] > 0.3
    for key in ("kd_loss", "hint_loss", "angle_loss", "l2_loss"):
        assert np.all(np.isfinite(logs[key])) and logs[key][1] > 0, key
    trainable = {id(v) for v in distiller.trainable_variables}
    assert {id(v) for v in distiller.teacher_importance.weights} <= trainable
    path = str(tmp_path / "ed_amtml.keras")
    distiller.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.grade == 2
    for a, b in zip(
        distiller.teacher_importance.weights + distiller.hint_regressors[1].weights,
        loaded.teacher_importance.weights + loaded.hint_regressors[1].weights,
    ):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    assert distiller.graduate().count_params() == _graded(partition).graduate().count_params()


def test_teacher_weights_of_each_example_match_numpy():
    distiller = make_distiller()
    x, _ = data(10)
    weights = distiller.teacher_weights(x, batch_size=4)  # 3 batches: 4, 4, 2
    importance = distiller.teacher_importance
    # Max pooling of the last feature map (c2), s = beta @ (theta * w)^T.
    beta = tap(distiller.student, "c2", x).max(axis=(1, 2)).astype("float64")
    theta = to_numpy(importance.theta).astype("float64")
    w = to_numpy(importance.w).astype("float64")
    expected = np_softmax(beta @ (theta * w[None, :]).T)
    assert weights.shape == (10, 3) and weights.dtype == np.float32
    np.testing.assert_allclose(weights, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)


def test_teacher_weights_needs_amtml_and_a_plain_student():
    plain = keras_edu.Distiller(student_model(), teacher_models())
    with pytest.raises(ValueError, match="loss=keras_edu.losses.AMTML"):
        plain.teacher_weights(data(4)[0])
    with pytest.raises(ValueError, match="`batch_size` must be a positive"):
        make_distiller().teacher_weights(data(4)[0], batch_size=0)
    partition = keras_edu.ClassPartition.contiguous(4, "1:1")
    teachers = [_specialist(g, 4, f"t{k}") for k, g in enumerate(partition.groups)]
    graded = keras_edu.Distiller(
        _graded(partition), teachers, loss=keras_edu.losses.AMTML()
    )
    with pytest.raises(ValueError, match="plain student only"):
        graded.teacher_weights(data(4)[0])
