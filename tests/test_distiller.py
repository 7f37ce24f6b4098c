"""Tests of `keras_edu.Distiller`: loss values against a NumPy reference,
routing to specialists, training behaviour, inputs, saving, bad arguments."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_edu
from keras_edu.losses import SoftTargetKD
from helpers import bn_dropout_model
from helpers import np_softmax
from helpers import to_numpy

RTOL = 1e-5
ATOL = 1e-5


# --------------------------------------------------------------------------
# NumPy reference of the spec, written out by hand (one example at a time).
# --------------------------------------------------------------------------


def np_log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def np_cross_entropy(z, y):
    """Per-example sparse cross-entropy on logits."""
    z = np.asarray(z, "float64")
    y = np.asarray(y).reshape(-1)
    return -np_log_softmax(z)[np.arange(len(y)), y]


def np_kd_one(teacher_probs, student_logits, temperature):
    """T^2 * KL(p || softmax(z / T)) for one example."""
    q = np_softmax(student_logits / temperature)
    p = teacher_probs
    return temperature**2 * np.sum(p * (np.log(p) - np.log(q)))


def reference_loss(z, y, teachers, alpha, temperature, sample_weight=None):
    """(total, student_loss, distillation_loss) as METHOD.md/the brief say.

    Args:
        z: Student logits, (B, C).
        y: Integer labels, (B,).
        teachers: A list of `(teacher_logits, classes)`: column j of
            `teacher_logits` is the logit of global class `classes[j]`.
    """
    z = np.asarray(z, "float64")
    y = np.asarray(y).reshape(-1)
    n = len(y)
    t = float(temperature)
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, "float64")
    w = w.reshape(-1)
    student_loss = np.sum(w * np_cross_entropy(z, y)) / n

    # Teachers over the same set of classes form one group (an ensemble).
    groups = []
    for logits, classes in teachers:
        logits = np.asarray(logits, "float64")
        for group in groups:
            if set(group[0][1]) == set(classes):
                group.append((logits, list(classes)))
                break
        else:
            groups.append([(logits, list(classes))])

    kd = np.zeros(n)
    covered = np.zeros(n, bool)
    for i in range(n):
        losses = []
        for group in groups:
            order = group[0][1]  # the first member's class order
            if y[i] not in order:
                continue
            probs = [
                np_softmax(logits[i, [classes.index(c) for c in order]] / t)
                for logits, classes in group
            ]
            p = np.mean(probs, axis=0)  # AVER: mix probabilities
            losses.append(np_kd_one(p, z[i, order], t))
        if losses:
            kd[i] = np.mean(losses)
            covered[i] = True
    distillation_loss = np.sum(w * kd) / max(covered.sum(), 1)
    total = alpha * student_loss + (1.0 - alpha) * distillation_loss
    return total, student_loss, distillation_loss


# --------------------------------------------------------------------------
# Models and data.
# --------------------------------------------------------------------------


def dense_model(width, input_dim=8, name=None, **dense_kwargs):
    dense_kwargs.setdefault(
        "kernel_initializer", keras.initializers.RandomNormal(stddev=1.0)
    )
    dense_kwargs.setdefault(
        "bias_initializer", keras.initializers.RandomNormal(stddev=0.5)
    )
    return keras.Sequential(
        [keras.Input((input_dim,)), keras.layers.Dense(width, **dense_kwargs)],
        name=name,
    )


def inputs(n, input_dim=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, input_dim)).astype("float32")


def labels(n, num_classes, seed=1):
    return np.random.default_rng(seed).integers(0, num_classes, size=(n,))


def make_teachers(class_lists, input_dim=8):
    return [
        keras_edu.Teacher(dense_model(len(c), input_dim), classes=c)
        for c in class_lists
    ]


def teacher_refs(teachers, x):
    return [(to_numpy(t.model(x)), t.classes) for t in teachers]


def distiller_loss(distiller, x, y, sample_weight=None, training=True):
    return to_numpy(
        distiller.compute_loss(
            x=x,
            y=y,
            y_pred=distiller(x),
            sample_weight=sample_weight,
            training=training,
        )
    )


def check_against_reference(
    num_classes, class_lists, y, alpha=0.3, temperature=4.0, sample_weight=None
):
    x = inputs(len(y))
    student = dense_model(num_classes)
    teachers = make_teachers(class_lists)
    distiller = keras_edu.Distiller(
        student, teachers, alpha=alpha, temperature=temperature
    )
    got = distiller_loss(distiller, x, y, sample_weight=sample_weight)
    z = to_numpy(student(x))
    refs = teacher_refs(teachers, x)
    total, ce, kd = reference_loss(
        z, y, refs, alpha, temperature, sample_weight=sample_weight
    )
    assert got.shape == ()
    np.testing.assert_allclose(got, total, rtol=RTOL, atol=ATOL)
    # The loss parts the Distiller tracks for its logs.
    np.testing.assert_allclose(
        to_numpy(distiller.student_loss_tracker.result()), ce, rtol=RTOL, atol=ATOL
    )
    np.testing.assert_allclose(
        to_numpy(distiller.distillation_loss_tracker.result()),
        kd,
        rtol=RTOL,
        atol=ATOL,
    )
    return got, z, refs


# --------------------------------------------------------------------------
# (a)-(f) Loss values against the NumPy reference.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("alpha,temperature", [(0.3, 4.0), (0.7, 2.0), (0.0, 1.0)])
def test_a_one_generalist_teacher(alpha, temperature):
    y = labels(12, 6)
    got, z, refs = check_against_reference(
        6, [list(range(6))], y, alpha=alpha, temperature=temperature
    )
    # Spelled out: alpha * CE + (1 - alpha) * mean_i T^2 KL(p_i || q_i).
    t_logits = refs[0][0].astype("float64")
    kd = np.mean(
        [
            np_kd_one(np_softmax(t_logits[i] / temperature), z[i], temperature)
            for i in range(len(y))
        ]
    )
    ce = np.mean(np_cross_entropy(z, y))
    np.testing.assert_allclose(got, alpha * ce + (1 - alpha) * kd, rtol=RTOL, atol=ATOL)


def test_b_two_interleaved_specialists():
    # Six classes, teachers over [0, 2, 4] and [5, 3, 1] (unsorted order).
    y = np.array([0, 1, 2, 3, 4, 5, 3, 1, 5, 0, 2, 4])
    got, z, refs = check_against_reference(6, [[0, 2, 4], [5, 3, 1]], y)
    # By hand: each example is taught by the one teacher covering its label,
    # the teacher's logit j pairs with student column classes[j].
    t_even, t_odd = refs[0][0], refs[1][0]
    kd = []
    for i, label in enumerate(y):
        if label % 2 == 0:
            p = np_softmax(t_even[i].astype("float64") / 4.0)
            kd.append(np_kd_one(p, z[i, [0, 2, 4]].astype("float64"), 4.0))
        else:
            p = np_softmax(t_odd[i].astype("float64") / 4.0)
            kd.append(np_kd_one(p, z[i, [5, 3, 1]].astype("float64"), 4.0))
    expected = 0.3 * np.mean(np_cross_entropy(z, y)) + 0.7 * np.mean(kd)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
    # Reading the second teacher as if it were sorted ([1, 3, 5]) is wrong.
    wrong, _, _ = reference_loss(z, y, [refs[0], (refs[1][0], (1, 3, 5))], 0.3, 4.0)
    assert abs(got - wrong) > 1e-3


def test_c_label_covered_by_no_teacher_gets_cross_entropy_only():
    # Classes 1 and 4 have no teacher.
    y = np.array([0, 1, 2, 3, 4, 5, 1, 4, 4, 1, 2, 4])
    got, z, refs = check_against_reference(6, [[0, 2], [5, 3]], y)
    covered = np.isin(y, [0, 2, 3, 5])
    assert covered.sum() == 5
    kd = []
    for i in np.flatnonzero(covered):
        logits, classes = refs[0] if y[i] in (0, 2) else refs[1]
        p = np_softmax(logits[i].astype("float64") / 4.0)
        kd.append(np_kd_one(p, z[i, list(classes)].astype("float64"), 4.0))
    # KD is averaged over the 5 covered examples, not over all 12.
    expected = 0.3 * np.mean(np_cross_entropy(z, y)) + 0.7 * np.sum(kd) / 5
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


def test_c_batch_without_any_covered_label_is_pure_cross_entropy():
    y = np.array([1, 4, 4, 1, 1, 1, 4, 4, 1, 4, 1, 1])
    x = inputs(len(y))
    student = dense_model(6)
    distiller = keras_edu.Distiller(student, make_teachers([[0, 2], [5, 3]]), alpha=0.3)
    got = distiller_loss(distiller, x, y)
    ce = np.mean(np_cross_entropy(to_numpy(student(x)), y))
    np.testing.assert_allclose(got, 0.3 * ce, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(
        to_numpy(distiller.distillation_loss_tracker.result()), 0.0, atol=1e-7
    )


def test_d_two_generalists_are_averaged_in_probability_space():
    y = labels(12, 6)
    got, z, refs = check_against_reference(6, [list(range(6))] * 2, y)
    t1, t2 = (r[0].astype("float64") for r in refs)
    kd_probs, kd_logits = [], []
    for i in range(len(y)):
        p = 0.5 * (np_softmax(t1[i] / 4.0) + np_softmax(t2[i] / 4.0))
        kd_probs.append(np_kd_one(p, z[i], 4.0))
        p_logit_mean = np_softmax((t1[i] + t2[i]) / 2.0 / 4.0)
        kd_logits.append(np_kd_one(p_logit_mean, z[i], 4.0))
    ce = np.mean(np_cross_entropy(z, y))
    np.testing.assert_allclose(
        got, 0.3 * ce + 0.7 * np.mean(kd_probs), rtol=RTOL, atol=ATOL
    )
    assert abs(got - (0.3 * ce + 0.7 * np.mean(kd_logits))) > 1e-4


def test_d_ensemble_members_listing_classes_in_different_orders():
    # Two teachers over {1, 4} in opposite orders form one AVER ensemble;
    # a third over {0, 5}; classes 2 and 3 are uncovered.
    y = np.array([0, 1, 2, 3, 4, 5, 4, 1, 0, 5, 3, 1])
    check_against_reference(6, [[1, 4], [4, 1], [0, 5]], y, temperature=2.0)


@pytest.mark.parametrize(
    "class_lists",
    [[[0, 1, 2, 3, 4, 5]], [[0, 2, 4], [5, 3, 1]], [[0, 2], [5, 3]]],
    ids=["generalist", "specialists", "partial-cover"],
)
def test_e_sample_weight(class_lists):
    y = np.array([0, 1, 2, 3, 4, 5, 1, 4, 0, 3, 2, 5])
    w = np.array(
        [1.0, 0.0, 2.0, 0.5, 1.0, 3.0, 1.0, 0.0, 0.25, 1.0, 1.5, 0.0], "float32"
    )
    got, z, refs = check_against_reference(6, class_lists, y, sample_weight=w)
    unweighted, _, _ = reference_loss(z, y, refs, 0.3, 4.0)
    assert abs(got - unweighted) > 1e-3


def test_e_sample_weight_by_hand_one_generalist():
    y = np.array([0, 1, 2, 1, 5, 4, 3, 0, 1, 2, 5, 5])
    w = np.array([2, 0, 1, 1, 0.5, 1, 1, 3, 1, 0, 1, 1], "float32")
    x = inputs(12)
    student, teacher = dense_model(6), dense_model(6)
    distiller = keras_edu.Distiller(student, [teacher], alpha=0.5, temperature=2.0)
    got = distiller_loss(distiller, x, y, sample_weight=w)
    z = to_numpy(student(x)).astype("float64")
    t = to_numpy(teacher(x)).astype("float64")
    ce = np_cross_entropy(z, y)
    kd = np.array([np_kd_one(np_softmax(t[i] / 2.0), z[i], 2.0) for i in range(12)])
    # Both parts: sum(w * value) / batch size (12 examples, all covered).
    expected = 0.5 * np.sum(w * ce) / 12 + 0.5 * np.sum(w * kd) / 12
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    "class_lists",
    [[[0, 1, 2, 3, 4, 5]], [[0, 2, 4], [5, 3]]],
    ids=["generalist", "partial-cover"],
)
def test_e_column_sample_weight_equals_flat_sample_weight(class_lists):
    y = np.array([0, 1, 2, 3, 4, 5, 1, 4, 0, 3, 2, 5])
    w = np.array([1, 2, 0, 1, 1, 3, 0.5, 1, 1, 0, 2, 1], "float32")
    x = inputs(len(y))
    distiller = keras_edu.Distiller(dense_model(6), make_teachers(class_lists))
    flat = distiller_loss(distiller, x, y, sample_weight=w)
    column = distiller_loss(distiller, x, y, sample_weight=w[:, None])
    np.testing.assert_allclose(column, flat, rtol=RTOL, atol=ATOL)


def test_f_generalist_plus_specialist_averages_the_two_groups():
    y = np.array([0, 1, 2, 3, 4, 5, 3, 1, 1, 0, 3, 2])
    got, z, refs = check_against_reference(6, [list(range(6)), [3, 1]], y)
    (t_all, _), (t_spec, _) = refs
    kd = []
    for i, label in enumerate(y):
        zi = z[i].astype("float64")
        general = np_kd_one(np_softmax(t_all[i].astype("float64") / 4.0), zi, 4.0)
        if label in (1, 3):
            special = np_kd_one(
                np_softmax(t_spec[i].astype("float64") / 4.0), zi[[3, 1]], 4.0
            )
            kd.append(0.5 * (general + special))
        else:
            kd.append(general)
    expected = 0.3 * np.mean(np_cross_entropy(z, y)) + 0.7 * np.mean(kd)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


def test_bare_keras_model_is_a_generalist_teacher():
    y = labels(12, 6)
    x = inputs(12)
    student, teacher = dense_model(6), dense_model(6)
    distiller = keras_edu.Distiller(student, teacher)  # not even a list
    assert distiller.teachers[0].classes == (0, 1, 2, 3, 4, 5)
    total, _, _ = reference_loss(
        to_numpy(student(x)), y, [(to_numpy(teacher(x)), (0, 1, 2, 3, 4, 5))], 0.3, 4.0
    )
    np.testing.assert_allclose(distiller_loss(distiller, x, y), total, rtol=RTOL)


def test_loss_with_its_own_temperature_keeps_it():
    y = labels(12, 6)
    x = inputs(12)
    student, teacher = dense_model(6), dense_model(6)
    refs = teacher_refs([keras_edu.Teacher(teacher)], x)
    z = to_numpy(student(x))
    own = keras_edu.Distiller(
        student, [teacher], temperature=4.0, loss=SoftTargetKD(temperature=2.0)
    )
    np.testing.assert_allclose(
        distiller_loss(own, x, y),
        reference_loss(z, y, refs, 0.3, 2.0)[0],
        rtol=RTOL,
    )
    # A term without temperature takes the Distiller's.
    inherited = keras_edu.Distiller(
        student, [teacher], temperature=3.0, loss=SoftTargetKD()
    )
    np.testing.assert_allclose(
        distiller_loss(inherited, x, y),
        reference_loss(z, y, refs, 0.3, 3.0)[0],
        rtol=RTOL,
    )


def test_core_logits_distillation_works_with_generalists():
    y = labels(12, 6)
    x = inputs(12)
    student, t1, t2 = dense_model(6), dense_model(6), dense_model(6)
    distiller = keras_edu.Distiller(
        student,
        [t1, t2],
        # A `KLDivergence` instance: with the default string "kl_divergence"
        # core Keras 3.15 applies KL to the scaled logits, not to softmaxes.
        loss=keras.distillation.LogitsDistillation(
            temperature=2.0, loss=keras.losses.KLDivergence()
        ),
    )
    z = to_numpy(student(x)).astype("float64")
    # The core term returns a batch mean per teacher; the Distiller
    # averages it over the teachers (not AVER: no probability mixing).
    kd = np.mean(
        [
            np.mean(
                [
                    np_kd_one(np_softmax(to_numpy(t(x))[i] / 2.0), z[i], 2.0)
                    for i in range(12)
                ]
            )
            for t in (t1, t2)
        ]
    )
    expected = 0.3 * np.mean(np_cross_entropy(z, y)) + 0.7 * kd
    np.testing.assert_allclose(distiller_loss(distiller, x, y), expected, rtol=1e-4)


# --------------------------------------------------------------------------
# Label formats.
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "class_lists",
    [[[0, 1, 2, 3, 4, 5]], [[0, 2, 4], [5, 3, 1]], [[0, 2], [3]]],
    ids=["generalist", "specialists", "partial-cover"],
)
def test_sparse_onehot_and_column_labels_give_the_same_loss(class_lists):
    y = np.array([0, 1, 2, 3, 4, 5, 2, 1, 0, 5, 3, 4])
    x = inputs(len(y))
    distiller = keras_edu.Distiller(dense_model(6), make_teachers(class_lists))
    sparse = distiller_loss(distiller, x, y)
    column = distiller_loss(distiller, x, y.reshape(-1, 1))
    one_hot = distiller_loss(distiller, x, np.eye(6, dtype="float32")[y])
    np.testing.assert_allclose(column, sparse, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(one_hot, sparse, rtol=RTOL, atol=ATOL)
    total, _, _ = reference_loss(
        to_numpy(distiller.student(x)),
        y,
        teacher_refs(distiller.teachers, x),
        0.3,
        4.0,
    )
    np.testing.assert_allclose(sparse, total, rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------
# Regularization.
# --------------------------------------------------------------------------


def test_student_weight_regularization_is_part_of_the_loss():
    y = labels(12, 6)
    x = inputs(12)
    student = dense_model(6, kernel_regularizer=keras.regularizers.L2(0.1))
    teacher = dense_model(6)
    distiller = keras_edu.Distiller(student, [teacher])
    got = distiller_loss(distiller, x, y)
    kernel = to_numpy(student.layers[-1].kernel).astype("float64")
    penalty = 0.1 * np.sum(kernel**2)
    assert penalty > 0.1
    np.testing.assert_allclose(
        float(sum(to_numpy(l) for l in student.losses)), penalty, rtol=1e-5
    )
    total, ce, _ = reference_loss(
        to_numpy(student(x)), y, [(to_numpy(teacher(x)), (0, 1, 2, 3, 4, 5))], 0.3, 4.0
    )
    np.testing.assert_allclose(got, total + penalty, rtol=RTOL, atol=ATOL)
    # Evaluation: the student's CE plus the same penalty.
    got_eval = distiller_loss(distiller, x, y, training=False)
    np.testing.assert_allclose(got_eval, ce + penalty, rtol=RTOL, atol=ATOL)


def test_teacher_activity_regularization_is_not_part_of_the_loss():
    y = labels(12, 6)
    x = inputs(12)
    student = dense_model(6)
    teacher = dense_model(6, activity_regularizer=keras.regularizers.L2(1.0))
    distiller = keras_edu.Distiller(student, [teacher])
    got = distiller_loss(distiller, x, y)
    total, _, _ = reference_loss(
        to_numpy(student(x)), y, [(to_numpy(teacher(x)), (0, 1, 2, 3, 4, 5))], 0.3, 4.0
    )
    np.testing.assert_allclose(got, total, rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------
# Training.
# --------------------------------------------------------------------------


def test_fit_logs_the_reference_loss_of_the_first_step():
    # One batch, one step: the logged values are computed before the update.
    y = np.array([0, 1, 2, 3, 4, 5, 1, 4, 2, 3, 0, 5])
    x = inputs(len(y))
    student = dense_model(6)
    teachers = [
        keras_edu.Teacher(bn_dropout_model(3), classes=[0, 2, 4]),
        keras_edu.Teacher(bn_dropout_model(2), classes=[5, 3]),
    ]
    distiller = keras_edu.Distiller(student, teachers, alpha=0.4, temperature=3.0)
    total, ce, kd = reference_loss(
        to_numpy(student(x)), y, teacher_refs(teachers, x), 0.4, 3.0
    )
    distiller.compile(optimizer=keras.optimizers.SGD(0.1))
    history = distiller.fit(x, y, epochs=1, batch_size=len(y), verbose=0)
    logs = {k: v[0] for k, v in history.history.items()}
    # Teachers in training mode (dropout on, batch statistics) would differ.
    np.testing.assert_allclose(logs["loss"], total, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logs["student_loss"], ce, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logs["distillation_loss"], kd, rtol=1e-4, atol=1e-5)


def test_fit_trains_the_student_and_leaves_teachers_untouched():
    n = 48
    x = inputs(n) * 3.0 + 2.0  # far from BN's initial statistics
    y = labels(n, 4)
    student = dense_model(4)
    teacher_model = bn_dropout_model(4)
    teachers = [
        keras_edu.Teacher(teacher_model),
        keras_edu.Teacher(bn_dropout_model(2), classes=[3, 1]),
    ]
    teacher_before = [[to_numpy(v).copy() for v in t.model.weights] for t in teachers]
    student_before = [to_numpy(v).copy() for v in student.weights]
    distiller = keras_edu.Distiller(student, teachers)
    assert len(distiller.trainable_weights) == len(student.trainable_weights)
    distiller.compile(optimizer=keras.optimizers.Adam(0.05))
    distiller.fit(x, y, epochs=2, batch_size=16, verbose=0)

    for before, teacher in zip(teacher_before, teachers):
        for b, v in zip(before, teacher.model.weights):
            np.testing.assert_array_equal(b, to_numpy(v), err_msg=v.path)
    bn = teacher_model.layers[1]
    np.testing.assert_array_equal(to_numpy(bn.moving_mean), np.zeros(16))
    np.testing.assert_array_equal(to_numpy(bn.moving_variance), np.ones(16))
    for b, v in zip(student_before, student.weights):
        assert not np.allclose(b, to_numpy(v)), v.path


def test_fit_and_evaluate_logs():
    n = 40
    x, y = inputs(n), labels(n, 4)
    xv, yv = inputs(20, seed=5), labels(20, 4, seed=6)
    student = dense_model(4)
    distiller = keras_edu.Distiller(student, make_teachers([[0, 1], [2, 3]]))
    distiller.compile(optimizer="adam", metrics=["accuracy"])
    history = distiller.fit(
        x, y, epochs=1, batch_size=16, validation_data=(xv, yv), verbose=0
    )
    assert set(history.history) == {
        "loss",
        "student_loss",
        "distillation_loss",
        "accuracy",
        "val_loss",
        "val_accuracy",
    }
    for values in history.history.values():
        assert np.isfinite(values).all()

    logs = distiller.evaluate(xv, yv, batch_size=8, return_dict=True, verbose=0)
    assert set(logs) == {"loss", "accuracy"}
    # The evaluation loss is the student's CE alone (over 3 uneven batches).
    z = to_numpy(student.predict(xv, verbose=0))
    np.testing.assert_allclose(
        logs["loss"], np.mean(np_cross_entropy(z, yv)), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(logs["accuracy"], np.mean(z.argmax(-1) == yv), atol=1e-6)
    np.testing.assert_allclose(
        history.history["val_loss"][0], logs["loss"], rtol=1e-5, atol=1e-6
    )
    # predict() is the student's.
    np.testing.assert_allclose(
        distiller.predict(xv, verbose=0), z, rtol=1e-6, atol=1e-6
    )


class ArrayPyDataset(keras.utils.PyDataset):
    def __init__(self, x, y, batch_size, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self):
        return int(np.ceil(len(self.x) / self.batch_size))

    def __getitem__(self, index):
        batch = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.x[batch], self.y[batch]


@pytest.mark.parametrize("kind", ["numpy", "tf.data", "PyDataset"])
def test_fit_accepts_common_inputs(kind):
    n = 32
    x, y = inputs(n), labels(n, 6)
    if kind == "numpy":
        data, kwargs = (x, y), {"batch_size": 16}
    elif kind == "tf.data":
        tf = pytest.importorskip("tensorflow")
        data = (tf.data.Dataset.from_tensor_slices((x, y)).batch(16),)
        kwargs = {}
    else:
        data, kwargs = (ArrayPyDataset(x, y, batch_size=16),), {}
    student = dense_model(6)
    teachers = make_teachers([[0, 2, 4], [5, 3, 1]])
    distiller = keras_edu.Distiller(student, teachers)
    # Learning rate 0: the logged loss is the mean of the two batches' losses.
    distiller.compile(optimizer=keras.optimizers.SGD(0.0), metrics=["accuracy"])
    history = distiller.fit(*data, epochs=1, verbose=0, shuffle=False, **kwargs)
    assert set(history.history) == {
        "loss",
        "student_loss",
        "distillation_loss",
        "accuracy",
    }
    z, refs = to_numpy(student(x)), teacher_refs(teachers, x)
    expected = np.mean(
        [
            reference_loss(
                z[batch], y[batch], [(t[batch], c) for t, c in refs], 0.3, 4.0
            )[0]
            for batch in (slice(0, 16), slice(16, 32))
        ]
    )
    np.testing.assert_allclose(history.history["loss"][0], expected, rtol=1e-5)


# --------------------------------------------------------------------------
# Saving.
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted_distiller():
    """A compiled Distiller (BN specialist + unsorted specialist) after 2 steps."""
    keras.utils.set_random_seed(7)
    y = np.array([0, 1, 2, 3, 4, 5, 3, 1, 0, 2, 4, 5, 1, 3, 5, 0])
    x = inputs(len(y))
    teachers = [
        keras_edu.Teacher(bn_dropout_model(3), classes=[0, 2, 4]),
        keras_edu.Teacher(dense_model(3), classes=[5, 3, 1]),
    ]
    distiller = keras_edu.Distiller(
        dense_model(6), teachers, alpha=0.25, temperature=2.5
    )
    distiller.compile(optimizer="adam", metrics=["accuracy"])
    distiller.fit(x, y, epochs=1, batch_size=8, verbose=0)
    return distiller, x, y


def test_keras_file_round_trip(fitted_distiller, tmp_path):
    distiller, x, y = fitted_distiller
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)

    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, keras_edu.Distiller)
    assert loaded.alpha == 0.25
    assert loaded.temperature == 2.5
    assert loaded.distillation_term.temperature == 2.5
    assert [t.classes for t in loaded.teachers] == [(0, 2, 4), (5, 3, 1)]
    for t in loaded.teachers:
        assert t.trainable_weights == []
        assert not t.model.trainable
    assert len(loaded.trainable_weights) == len(loaded.student.trainable_weights)
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), distiller.predict(x, verbose=0), rtol=1e-6
    )
    for new, old in zip(loaded.teachers, distiller.teachers):
        np.testing.assert_allclose(
            to_numpy(new(x)), to_numpy(old(x)), rtol=1e-6, atol=1e-6
        )
    np.testing.assert_allclose(
        distiller_loss(loaded, x, y), distiller_loss(distiller, x, y), rtol=1e-6
    )
    # Compiled again, the loaded distiller keeps training.
    loaded.compile(optimizer="adam", metrics=["accuracy"])
    history = loaded.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def test_loaded_distiller_keeps_its_compile_state(fitted_distiller, tmp_path):
    distiller, x, y = fitted_distiller
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    loaded = keras.saving.load_model(path)
    # The optimizer state (2 steps taken) comes back with the model...
    assert int(to_numpy(loaded.optimizer.iterations)) == 2
    # ...and training resumes without calling compile() again.
    history = loaded.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert set(history.history) == {
        "loss",
        "student_loss",
        "distillation_loss",
        "accuracy",
    }


def test_saved_student_loads_without_keras_edu(fitted_distiller, tmp_path):
    distiller, x, _ = fitted_distiller
    student_path = tmp_path / "student.keras"
    distiller.student.save(str(student_path))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", to_numpy(distiller.student(x)))

    code = (
        "import sys, numpy as np, keras\n"
        "model = keras.saving.load_model(sys.argv[1])\n"
        "out = keras.ops.convert_to_numpy(model(np.load(sys.argv[2])))\n"
        "np.testing.assert_allclose(out, np.load(sys.argv[3]), rtol=1e-6)\n"
        "assert not any(m.startswith('keras_edu') for m in sys.modules)\n"
        "print('LOADED', type(model).__name__)\n"
    )
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(student_path),
            str(tmp_path / "x.npy"),
            str(tmp_path / "expected.npy"),
        ],
        env=env,
        cwd=str(tmp_path),
        check=False,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LOADED Sequential" in result.stdout


# --------------------------------------------------------------------------
# Mixed precision.
# --------------------------------------------------------------------------


def test_mixed_bfloat16(edu_mixed_bfloat16_policy):
    n = 32
    x, y = inputs(n), labels(n, 6)
    student = dense_model(6)
    teachers = make_teachers([[0, 2, 4], [5, 3, 1], list(range(6))])
    assert keras.backend.standardize_dtype(student(x).dtype) == "bfloat16"
    distiller = keras_edu.Distiller(student, teachers)
    distiller.compile(optimizer="adam", metrics=["accuracy"])
    history = distiller.fit(x, y, epochs=1, batch_size=16, verbose=0)
    for key in ("loss", "student_loss", "distillation_loss"):
        assert np.isfinite(history.history[key]).all(), key
    loss = distiller.compute_loss(x=x, y=y, y_pred=distiller(x), training=True)
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    # Same value as the reference on the (bfloat16) logits, within bf16 noise.
    total, _, _ = reference_loss(
        to_numpy(keras.ops.cast(student(x), "float32")),
        y,
        [
            (to_numpy(keras.ops.cast(t.model(x), "float32")), t.classes)
            for t in teachers
        ],
        0.3,
        4.0,
    )
    np.testing.assert_allclose(to_numpy(loss), total, rtol=1e-3)


def test_mixed_float16_scales_the_loss():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        n = 32
        x, y = inputs(n), labels(n, 6)
        student = dense_model(6)
        teachers = make_teachers([[0, 2, 4], [5, 3, 1]])
        distiller = keras_edu.Distiller(student, teachers)
        distiller.compile(optimizer="sgd")
        # float16 gradients underflow without loss scaling; compile adds it.
        assert isinstance(
            distiller.optimizer, keras.optimizers.LossScaleOptimizer
        )
        loss = distiller.compute_loss(x=x, y=y, y_pred=distiller(x), training=True)
        assert keras.backend.standardize_dtype(loss.dtype) == "float32"
        before = to_numpy(student.trainable_weights[0]).copy()
        history = distiller.fit(x, y, epochs=1, batch_size=16, verbose=0)
        assert np.isfinite(history.history["loss"]).all()
        assert not np.array_equal(before, to_numpy(student.trainable_weights[0]))
    finally:
        keras.mixed_precision.set_global_policy("float32")


# --------------------------------------------------------------------------
# Bad arguments.
# --------------------------------------------------------------------------


def test_no_teachers():
    with pytest.raises(ValueError, match="`teachers` must list at least one"):
        keras_edu.Distiller(dense_model(4), [])


def test_teacher_of_the_wrong_type():
    with pytest.raises(ValueError, match=r"`teachers\[1\]` must be"):
        keras_edu.Distiller(dense_model(4), [dense_model(4), "teacher"])


def test_teacher_width_differs_from_its_classes():
    with pytest.raises(ValueError, match=r"outputs 3 logits .*`classes` lists 2"):
        keras_edu.Distiller(
            dense_model(4), [keras_edu.Teacher(dense_model(3), classes=[0, 1])]
        )


@pytest.mark.parametrize(
    "classes,match",
    [([1, 2, 1], "must not repeat"), ([0, -2, 1], "non-negative")],
)
def test_duplicate_or_negative_class_ids(classes, match):
    with pytest.raises(ValueError, match=match):
        keras_edu.Distiller(
            dense_model(4), [keras_edu.Teacher(dense_model(3), classes=classes)]
        )


def test_teacher_class_beyond_the_student_outputs():
    teachers = [
        keras_edu.Teacher(dense_model(2), classes=[0, 1]),
        keras_edu.Teacher(dense_model(2), classes=[3, 4]),
    ]
    with pytest.raises(ValueError, match=r"`teachers\[1\]` covers class ids \[4\]"):
        keras_edu.Distiller(dense_model(4), teachers)


def test_teacher_and_student_input_shapes_differ():
    with pytest.raises(
        ValueError, match=r"`teachers\[0\]` takes inputs of shape \(6,\)"
    ):
        keras_edu.Distiller(dense_model(4, input_dim=8), [dense_model(4, input_dim=6)])


@pytest.mark.parametrize("temperature", [0.0, -1.0, 0])
def test_temperature_must_be_positive(temperature):
    with pytest.raises(ValueError, match="`temperature` must be a positive"):
        keras_edu.Distiller(dense_model(4), [dense_model(4)], temperature=temperature)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, "0.3", None])
def test_alpha_must_be_in_unit_interval(alpha):
    with pytest.raises(ValueError, match=r"`alpha` must be a number in \[0, 1\]"):
        keras_edu.Distiller(dense_model(4), [dense_model(4)], alpha=alpha)


def test_numpy_scalar_alpha_and_temperature_are_accepted():
    distiller = keras_edu.Distiller(
        dense_model(4),
        [dense_model(4)],
        alpha=np.float32(0.5),
        temperature=np.float32(2.0),
    )
    assert distiller.alpha == 0.5
    assert distiller.temperature == 2.0


@pytest.mark.parametrize("temperature", [float("nan"), float("inf")])
def test_non_finite_temperature_is_rejected(temperature):
    try:
        keras_edu.Distiller(dense_model(4), [dense_model(4)], temperature=temperature)
    except ValueError as error:
        assert "temperature" in str(error)
    else:
        raise AssertionError(f"temperature={temperature} was accepted")


def test_compile_rejects_loss():
    distiller = keras_edu.Distiller(dense_model(4), [dense_model(4)])
    with pytest.raises(ValueError, match=r"does not take `loss`"):
        distiller.compile(optimizer="adam", loss="sparse_categorical_crossentropy")


def test_student_ending_in_softmax():
    student = dense_model(4, activation="softmax")
    with pytest.raises(ValueError, match=r"student .* ends in a softmax"):
        keras_edu.Distiller(student, [dense_model(4)])
    student = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(4), keras.layers.Softmax()]
    )
    with pytest.raises(ValueError, match=r"student .* ends in a softmax"):
        keras_edu.Distiller(student, [dense_model(4)])


def test_teacher_ending_in_softmax():
    with pytest.raises(ValueError, match=r"`teachers\[0\]` .* ends in a softmax"):
        keras_edu.Distiller(dense_model(4), [dense_model(4, activation="softmax")])


def test_student_must_be_a_model():
    with pytest.raises(ValueError, match="`student` must be a `keras.Model`"):
        keras_edu.Distiller(keras.layers.Dense(4), [dense_model(4)])


def test_loss_must_be_a_distillation_loss():
    with pytest.raises(ValueError, match="`loss` must be a"):
        keras_edu.Distiller(dense_model(4), [dense_model(4)], loss="kl_divergence")


def test_core_logits_distillation_with_specialists():
    teachers = make_teachers([[0, 1], [2, 3]])
    with pytest.raises(ValueError, match=r"`loss` \(LogitsDistillation\)"):
        keras_edu.Distiller(
            dense_model(4),
            teachers,
            loss=keras.distillation.LogitsDistillation(temperature=2.0),
        )
