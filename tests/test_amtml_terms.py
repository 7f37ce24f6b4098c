"""Tests of the AMTML-KD building blocks against NumPy references.

`TeacherImportance`, `HintRegressor`, `AdaptiveEnsembleKD`, `HintLoss`,
`RKDAngle` and `RKDDistance`, imported from their modules.
"""

import itertools
import math

import keras
import numpy as np
import pytest

from keras_edu.layers.hint_regressor import HintRegressor
from keras_edu.layers.teacher_importance import TeacherImportance
from keras_edu.losses.adaptive_ensemble_kd import AdaptiveEnsembleKD
from keras_edu.losses.hint_loss import HintLoss
from keras_edu.losses.rkd import RKDAngle, RKDDistance
from keras_edu.losses.soft_target_kd import SoftTargetKD
from helpers import np_kl
from helpers import np_softmax
from helpers import to_numpy

BACKEND = keras.backend.backend()


# --------------------------------------------------------------------------
# NumPy references, written out by hand (float64).
# --------------------------------------------------------------------------


def np_importance(features, theta, w, pooling="max"):
    """a = softmax_k(sum_c beta_c theta_kc w_c)."""
    x = np.asarray(features, "float64")
    if x.ndim == 4:
        beta = x.max(axis=(1, 2)) if pooling == "max" else x.mean(axis=(1, 2))
    else:
        beta = x
    scores = np.zeros((x.shape[0], theta.shape[0]))
    for b in range(x.shape[0]):
        for k in range(theta.shape[0]):
            scores[b, k] = sum(
                beta[b, c] * theta[k, c] * w[c] for c in range(theta.shape[1])
            )
    return np_softmax(scores)


def np_adaptive_kd(teacher_logits, student_logits, weights, temperature):
    """T^2 KL(sum_k a_k softmax(t_k / T) || softmax(z / T)), per example."""
    t = float(temperature)
    probs = [np_softmax(np.asarray(l, "float64") / t) for l in teacher_logits]
    weights = np.asarray(weights, "float64")
    p = sum(weights[:, k : k + 1] * probs[k] for k in range(len(probs)))
    q = np_softmax(np.asarray(student_logits, "float64") / t)
    return t**2 * np_kl(p, q)


def np_normalize(x):
    norm = np.sqrt(np.sum(x**2, axis=-1, keepdims=True))
    return np.where(norm > 1e-12, x / np.maximum(norm, 1e-300), 0.0)


def np_avg_pool(x, rh, rw):
    b, h, w, c = x.shape
    out = np.zeros((b, h // rh, w // rw, c))
    for i in range(h // rh):
        for j in range(w // rw):
            out[:, i, j] = x[:, i * rh : (i + 1) * rh, j * rw : (j + 1) * rw].mean(
                axis=(1, 2)
            )
    return out


def np_hint(teacher_map, student_map):
    t = np.asarray(teacher_map, "float64")
    s = np.asarray(student_map, "float64")
    if t.shape[1] > s.shape[1] or t.shape[2] > s.shape[2]:
        t = np_avg_pool(t, t.shape[1] // s.shape[1], t.shape[2] // s.shape[2])
    elif s.shape[1] > t.shape[1] or s.shape[2] > t.shape[2]:
        s = np_avg_pool(s, s.shape[1] // t.shape[1], s.shape[2] // t.shape[2])
    return np.mean((np_normalize(s) - np_normalize(t)) ** 2, axis=(1, 2, 3))


def np_smooth_l1(x, y):
    d = np.abs(x - y)
    return np.mean(np.where(d < 1.0, 0.5 * d**2, d - 0.5))


def np_angles(e):
    e = np.asarray(e, "float64")
    n = len(e)
    out = np.zeros((n, n, n))
    for i, j, k in itertools.product(range(n), repeat=3):
        u, v = e[j] - e[i], e[k] - e[i]
        nu, nv = np.linalg.norm(u), np.linalg.norm(v)
        if nu > 1e-12 and nv > 1e-12:
            out[i, j, k] = u @ v / (nu * nv)
    return out


def np_distances(e):
    e = np.asarray(e, "float64")
    n = len(e)
    d = np.zeros((n, n))
    for i, j in itertools.product(range(n), repeat=2):
        if i != j:
            d[i, j] = max(np.linalg.norm(e[i] - e[j]), 1e-6)  # sqrt(1e-12)
    return d / d[d > 0].mean()


def run(fn):
    """`fn()` as NumPy; compiled under JAX (op-by-op JAX is slow on CPU)."""
    if BACKEND == "jax":
        import jax

        return np.asarray(jax.jit(fn)())
    return to_numpy(fn())


def dtype_of(x):
    return keras.backend.standardize_dtype(x.dtype)


def rand(shape, seed, scale=1.0, low=None):
    rng = np.random.default_rng(seed)
    if low is not None:
        return rng.uniform(low, scale, size=shape).astype("float32")
    return (scale * rng.normal(size=shape)).astype("float32")


def built_importance(num_teachers, channels, seed, scale=0.5, **kwargs):
    """A built `TeacherImportance` with large random theta and w."""
    layer = TeacherImportance(num_teachers, **kwargs)
    layer.build((None, channels))
    layer.theta.assign(rand((num_teachers, channels), seed, scale))
    layer.w.assign(rand((channels,), seed + 1, scale))
    return layer


# --------------------------------------------------------------------------
# Backend-specific gradients.
# --------------------------------------------------------------------------


def gradients(fn, *args):
    """Gradients of the scalar `fn(*args)` with respect to every argument.

    An argument the output does not depend on gives `None` (TensorFlow,
    torch) or zeros (JAX).
    """
    args = [np.asarray(a, "float32") for a in args]
    if BACKEND == "tensorflow":
        import tensorflow as tf

        tensors = [tf.constant(a) for a in args]
        with tf.GradientTape() as tape:
            for t in tensors:
                tape.watch(t)
            out = fn(*tensors)
        grads = tape.gradient(out, tensors)
        return [None if g is None else np.asarray(g) for g in grads]
    if BACKEND == "jax":
        import jax

        # Compiled once: faster than op-by-op tracing on CPU.
        grads = jax.jit(jax.grad(fn, argnums=tuple(range(len(args)))))(
            *[jax.numpy.asarray(a) for a in args]
        )
        return [np.asarray(g) for g in grads]
    if BACKEND == "torch":
        import torch

        tensors = [torch.tensor(a, requires_grad=True) for a in args]
        out = fn(*tensors)
        grads = torch.autograd.grad(out, tensors, allow_unused=True)
        return [None if g is None else g.detach().cpu().numpy() for g in grads]
    pytest.skip(f"No gradient helper for backend {BACKEND}.")


def assert_no_gradient(grad):
    assert grad is None or not np.any(grad), grad


def assert_has_gradient(grad):
    assert grad is not None and np.all(np.isfinite(grad)) and np.any(grad), grad


# --------------------------------------------------------------------------
# TeacherImportance.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["max", "average"])
def test_importance_matches_numpy_on_feature_maps(pooling):
    layer = built_importance(3, 6, seed=1, pooling=pooling)
    features = rand((4, 5, 5, 6), seed=3, scale=2.0)
    out = run(lambda: layer(features))
    expected = np_importance(
        features, to_numpy(layer.theta), to_numpy(layer.w), pooling
    )
    assert out.shape == (4, 3)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.sum(axis=-1), 1.0, rtol=1e-6)
    # Max and average pooling do give different weights here.
    other = np_importance(
        features,
        to_numpy(layer.theta),
        to_numpy(layer.w),
        "average" if pooling == "max" else "max",
    )
    assert np.abs(other - expected).max() > 1e-2


def test_importance_accepts_pooled_features():
    layer = built_importance(2, 5, seed=4)
    beta = rand((3, 5), seed=5)
    expected = np_importance(beta, to_numpy(layer.theta), to_numpy(layer.w))
    np.testing.assert_allclose(run(lambda: layer(beta)), expected, rtol=1e-5, atol=1e-6)


def test_initial_weights_are_near_uniform():
    num_teachers, channels = 5, 64
    layer = TeacherImportance(num_teachers)
    layer.build((None, 8, 8, channels))
    features = rand((16, 8, 8, channels), seed=6, scale=1.0, low=0.0)
    out = run(lambda: layer(features))
    theta, w = to_numpy(layer.theta), to_numpy(layer.w)
    # The documented bound: |a_k - 1/K| <= (exp(2m) - 1) / K with
    # m = ||beta||_1 max|theta| max|w|.
    beta = features.max(axis=(1, 2))
    m = np.abs(beta).sum(axis=-1).max() * np.abs(theta).max() * np.abs(w).max()
    deviation = np.abs(out - 1.0 / num_teachers).max()
    assert deviation <= (math.exp(2 * m) - 1) / num_teachers + 1e-7
    # And the documented figure: 64 channels, activations of order 1.
    assert np.abs(theta).max() < 5e-3 and np.abs(w).max() < 5e-3
    assert deviation < 1e-3 / num_teachers


def test_importance_validates_arguments():
    with pytest.raises(ValueError, match="num_teachers"):
        TeacherImportance(0)
    with pytest.raises(ValueError, match="pooling"):
        TeacherImportance(2, pooling="min")
    with pytest.raises(ValueError, match="l2"):
        TeacherImportance(2, l2=-1.0)
    with pytest.raises(ValueError, match="channel"):
        TeacherImportance(2).build((None, None))


def test_l2_penalty_matches_numpy_and_is_in_losses():
    layer = built_importance(3, 4, seed=7, l2=0.1)
    theta, w = to_numpy(layer.theta), to_numpy(layer.w)
    expected = 0.1 * (np.sum(w.astype("float64") ** 2) + np.sum(theta**2))
    np.testing.assert_allclose(float(to_numpy(layer.l2_penalty())), expected, rtol=1e-6)
    # Present before any call, two terms (theta and w), summing to it.
    assert len(layer.losses) == 2
    np.testing.assert_allclose(
        sum(float(to_numpy(l)) for l in layer.losses), expected, rtol=1e-6
    )
    assert TeacherImportance(3, l2=0.0).losses == []


def test_l2_penalty_counted_once_however_many_calls():
    inputs = keras.Input((4, 4, 6))
    importance = TeacherImportance(3, l2=0.5, initializer_stddev=0.5)
    a1 = importance(inputs)
    a2 = importance(inputs)  # called twice in one forward pass
    model = keras.Model(inputs, keras.layers.Average()([a1, a2]))
    features = rand((2, 4, 4, 6), seed=8)
    model(features)
    model(features)
    penalty = float(to_numpy(importance.l2_penalty()))
    assert penalty > 0.1
    assert len(model.losses) == 2
    np.testing.assert_allclose(
        sum(float(to_numpy(l)) for l in model.losses), penalty, rtol=1e-6
    )
    # The stateless path the JAX trainer takes.
    _, _, losses = model.stateless_call(
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        features,
        return_losses=True,
    )
    assert len(losses) == 2
    np.testing.assert_allclose(
        sum(float(to_numpy(l)) for l in losses), penalty, rtol=1e-6
    )


def test_l2_penalty_counted_once_by_a_trainer():
    inputs = keras.Input((4, 4, 6))
    importance = TeacherImportance(3, l2=0.5, initializer_stddev=0.5)
    model = keras.Model(inputs, importance(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    features = rand((2, 4, 4, 6), seed=9)
    target = np.full((2, 3), 1.0 / 3.0, "float32")
    mse = np.mean((to_numpy(model(features)) - target) ** 2)
    penalty = float(to_numpy(importance.l2_penalty()))
    loss = model.train_on_batch(features, target)
    loss = loss[0] if isinstance(loss, (list, tuple)) else loss
    np.testing.assert_allclose(loss, mse + penalty, rtol=1e-5)


# --------------------------------------------------------------------------
# AdaptiveEnsembleKD.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 5.0])
def test_adaptive_kd_matches_numpy(temperature):
    teachers = [rand((6, 7), seed=s, scale=3.0) for s in (10, 11, 12)]
    student = rand((6, 7), seed=13, scale=3.0)
    weights = np_softmax(rand((6, 3), seed=14, scale=2.0)).astype("float32")
    kd = AdaptiveEnsembleKD(temperature=temperature)
    out = run(lambda: kd.per_sample_loss(teachers, student, teacher_weights=weights))
    expected = np_adaptive_kd(teachers, student, weights, temperature)
    assert out.shape == (6,)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        float(run(lambda: kd.compute_loss(teachers, student, teacher_weights=weights))),
        expected.mean(),
        rtol=1e-5,
    )
    p = run(lambda: kd.integrated_target(teachers, teacher_weights=weights))
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, rtol=1e-5)


def test_adaptive_kd_mixes_probabilities_not_logits():
    # Two confident teachers that disagree: mixing probabilities keeps 30%
    # on teacher 2's class; mixing logits (0.7 t1 + 0.3 t2) puts ~96% on
    # teacher 1's. Against a student sure of class 0 they differ a lot.
    t1 = np.array([[8.0, 0.0, 0.0]], "float32")
    t2 = np.array([[0.0, 8.0, 0.0]], "float32")
    student = np.array([[8.0, 0.0, 0.0]], "float32")
    weights = np.array([[0.7, 0.3]], "float32")
    kd = AdaptiveEnsembleKD(temperature=1.0)
    out = float(
        run(lambda: kd.per_sample_loss([t1, t2], student, teacher_weights=weights))[0]
    )
    prob_mix = np_adaptive_kd([t1, t2], student, weights, 1.0)[0]
    logit_mix = np_adaptive_kd([0.7 * t1 + 0.3 * t2], student, [[1.0]], 1.0)[0]
    assert abs(prob_mix - logit_mix) > 1.0
    np.testing.assert_allclose(out, prob_mix, rtol=1e-5)
    p = run(lambda: kd.integrated_target([t1, t2], teacher_weights=weights))[0]
    np.testing.assert_allclose(
        p,
        0.7 * np_softmax(t1[0].astype("float64")) + 0.3 * np_softmax(t2[0]),
        rtol=1e-5,
    )


def test_adaptive_kd_without_weights_is_aver():
    teachers = [rand((5, 4), seed=s, scale=3.0) for s in (15, 16)]
    student = rand((5, 4), seed=17, scale=3.0)
    out = run(lambda: AdaptiveEnsembleKD(4.0).per_sample_loss(teachers, student))
    aver = run(lambda: SoftTargetKD(4.0).per_sample_loss(teachers, student))
    equal = np.full((5, 2), 0.5)
    np.testing.assert_allclose(out, aver, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        out, np_adaptive_kd(teachers, student, equal, 4.0), rtol=1e-5, atol=1e-6
    )


def test_adaptive_kd_one_hot_weights_select_a_teacher():
    teachers = [rand((3, 4), seed=s, scale=3.0) for s in (18, 19)]
    student = rand((3, 4), seed=20)
    weights = np.array([[1.0, 0.0]] * 3, "float32")  # log(0) must not leak
    out = run(
        lambda: AdaptiveEnsembleKD(2.0).per_sample_loss(
            teachers, student, teacher_weights=weights
        )
    )
    single = run(lambda: SoftTargetKD(2.0).per_sample_loss(teachers[0], student))
    np.testing.assert_allclose(out, single, rtol=1e-5, atol=1e-6)


def test_adaptive_kd_errors():
    teachers = [rand((3, 4), seed=s) for s in (21, 22)]
    with pytest.raises(ValueError, match=r"num_teachers=2"):
        AdaptiveEnsembleKD(2.0).per_sample_loss(
            teachers, teachers[0], teacher_weights=np.ones((3, 3), "float32") / 3
        )
    with pytest.raises(ValueError, match="temperature"):
        AdaptiveEnsembleKD().per_sample_loss(teachers, teachers[0])
    with pytest.raises(ValueError, match="temperature"):
        AdaptiveEnsembleKD(temperature=0.0)


def _adaptive_pipeline_np(theta, w, features, teachers, student, temperature):
    weights = np_importance(features, theta, w, "max")
    return np_adaptive_kd(teachers, student, weights, temperature).mean()


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_gradients_reach_theta_and_w_not_features(stop_gradient):
    importance = built_importance(2, 4, seed=23, scale=0.7, stop_gradient=stop_gradient)
    kd = AdaptiveEnsembleKD(temperature=2.0)
    teachers = [rand((3, 5), seed=s, scale=3.0) for s in (24, 25)]
    student = rand((3, 5), seed=26)
    features = rand((3, 2, 2, 4), seed=27, scale=1.5)

    def loss(theta, w, x, t1, t2):
        weights, _ = importance.stateless_call([theta, w], [], x)
        return kd.compute_loss([t1, t2], student, teacher_weights=weights)

    theta0, w0 = to_numpy(importance.theta), to_numpy(importance.w)
    g_theta, g_w, g_x, g_t1, g_t2 = gradients(loss, theta0, w0, features, *teachers)
    assert_has_gradient(g_theta)
    assert_has_gradient(g_w)
    assert_no_gradient(g_t1)
    assert_no_gradient(g_t2)
    if stop_gradient:
        assert_no_gradient(g_x)
    else:
        assert_has_gradient(g_x)

    # The theta gradient agrees with central differences of the reference.
    h = 1e-3
    numeric = np.zeros_like(theta0, "float64")
    for idx in np.ndindex(theta0.shape):
        plus, minus = theta0.astype("float64"), theta0.astype("float64")
        plus[idx] += h
        minus[idx] -= h
        numeric[idx] = (
            _adaptive_pipeline_np(plus, w0, features, teachers, student, 2.0)
            - _adaptive_pipeline_np(minus, w0, features, teachers, student, 2.0)
        ) / (2 * h)
    np.testing.assert_allclose(g_theta, numeric, rtol=2e-2, atol=1e-5)


# --------------------------------------------------------------------------
# HintRegressor and HintLoss.
# --------------------------------------------------------------------------


def test_hint_regressor_matches_numpy():
    regressor = HintRegressor(5, use_bias=True, bias_initializer="ones")
    x = rand((2, 3, 3, 4), seed=28)
    regressor.build(x.shape)
    out = run(lambda: regressor(x))
    expected = x.astype("float64") @ to_numpy(regressor.kernel) + 1.0
    assert out.shape == (2, 3, 3, 5)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert len(HintRegressor(5)(x).shape) == 4
    with pytest.raises(ValueError, match="channels"):
        HintRegressor(0)


@pytest.mark.parametrize(
    "student_shape, teacher_shape",
    [
        ((3, 4, 4, 6), (3, 4, 4, 6)),  # same size
        ((3, 8, 8, 6), (3, 4, 4, 6)),  # student pooled 2x2
        ((3, 4, 4, 6), (3, 8, 8, 6)),  # teacher pooled 2x2
        ((3, 8, 4, 6), (3, 4, 4, 6)),  # student pooled 2x1
        ((3, 4, 4, 6), (3, 12, 8, 6)),  # teacher pooled 3x2
    ],
)
def test_hint_loss_matches_numpy(student_shape, teacher_shape):
    student = rand(student_shape, seed=29)
    teacher = rand(teacher_shape, seed=30)
    hint = HintLoss()
    out = run(lambda: hint.per_sample_loss(teacher, student))
    expected = np_hint(teacher, student)
    assert out.shape == (3,)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        float(run(lambda: hint.compute_loss(teacher, student))),
        expected.mean(),
        rtol=1e-5,
    )


def test_hint_loss_normalises_each_position():
    teacher = rand((2, 3, 3, 4), seed=31)
    # A positive rescaling of each position changes nothing.
    scale = rand((2, 3, 3, 1), seed=32, scale=10.0, low=0.1)
    student = teacher * scale
    np.testing.assert_allclose(
        run(lambda: HintLoss().per_sample_loss(teacher, student)), 0.0, atol=1e-6
    )
    # Opposite directions: |u - (-u)|^2 = 4 over C channels at each position.
    np.testing.assert_allclose(
        run(lambda: HintLoss().per_sample_loss(teacher, -student)), 4.0 / 4, rtol=1e-5
    )


def test_hint_loss_zero_positions_and_lists():
    teacher = rand((2, 4, 4, 3), seed=33)
    student = rand((2, 4, 4, 3), seed=34)
    student[:, 0, 0, :] = 0.0  # an all-zero position, as after a ReLU
    expected = np_hint(teacher, student)
    np.testing.assert_allclose(
        run(lambda: HintLoss().per_sample_loss(teacher, student)), expected, rtol=1e-5
    )
    teacher2, student2 = rand((2, 2, 2, 5), seed=35), rand((2, 4, 4, 5), seed=36)
    np.testing.assert_allclose(
        run(
            lambda: HintLoss().per_sample_loss([teacher, teacher2], [student, student2])
        ),
        expected + np_hint(teacher2, student2),
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="one student map per teacher map"):
        HintLoss().per_sample_loss([teacher, teacher2], [student])


@pytest.mark.parametrize(
    "student_shape, teacher_shape, reason",
    [
        ((2, 6, 6, 3), (2, 4, 4, 3), "not an integer multiple"),
        ((2, 8, 2, 3), (2, 4, 4, 3), "neither map"),
        ((2, 4, 4, 5), (2, 4, 4, 3), "HintRegressor"),
        ((2, 4, 3), (2, 4, 4, 3), "same rank"),
    ],
)
def test_hint_loss_spatial_mismatch_error(student_shape, teacher_shape, reason):
    student, teacher = rand(student_shape, seed=37), rand(teacher_shape, seed=38)
    with pytest.raises(ValueError, match=reason) as info:
        HintLoss().compute_loss(teacher, student)
    message = str(info.value)
    assert str(student_shape) in message and str(teacher_shape) in message
    with pytest.raises(ValueError, match=reason):
        HintLoss().validate_outputs(teacher, student)


def test_gradients_reach_the_hint_regressor():
    regressor = HintRegressor(6)
    regressor.build((None, 8, 8, 4))
    student = rand((2, 8, 8, 4), seed=39)
    student[:, 1, 1, :] = 0.0  # zero positions give finite gradients
    teacher = rand((2, 4, 4, 6), seed=40)
    hint = HintLoss()

    def loss(kernel, s, t):
        mapped, _ = regressor.stateless_call([kernel], [], s)
        return hint.compute_loss(t, mapped)

    g_kernel, g_student, g_teacher = gradients(
        loss, to_numpy(regressor.kernel), student, teacher
    )
    assert_has_gradient(g_kernel)
    assert_has_gradient(g_student)
    assert_no_gradient(g_teacher)


# --------------------------------------------------------------------------
# RKD.
# --------------------------------------------------------------------------


def test_rkd_angle_matches_numpy():
    student = np_softmax(rand((6, 5), seed=41, scale=2.0)).astype("float32")
    teacher = np_softmax(rand((6, 5), seed=42, scale=2.0)).astype("float32")
    out = run(lambda: RKDAngle().compute_loss(teacher, student))
    expected = np_smooth_l1(np_angles(student), np_angles(teacher))
    assert out.shape == ()
    np.testing.assert_allclose(float(out), expected, rtol=1e-5, atol=1e-7)
    # Large embeddings reach the linear part of the Huber loss.
    big_s, big_t = rand((5, 3), seed=43, scale=5.0), rand((5, 3), seed=44, scale=5.0)
    np.testing.assert_allclose(
        float(run(lambda: RKDAngle().compute_loss(big_t, big_s))),
        np_smooth_l1(np_angles(big_s), np_angles(big_t)),
        rtol=1e-5,
    )
    # Invariant to translation and scale of the student.
    np.testing.assert_allclose(
        float(run(lambda: RKDAngle().compute_loss(student, 3.0 * student + 1.0))),
        0.0,
        atol=1e-6,
    )


def test_rkd_distance_matches_numpy():
    student = rand((6, 5), seed=45, scale=3.0)
    teacher = rand((6, 5), seed=46)
    out = run(lambda: RKDDistance().compute_loss(teacher, student))
    expected = np_smooth_l1(np_distances(student), np_distances(teacher))
    assert out.shape == ()
    np.testing.assert_allclose(float(out), expected, rtol=1e-5, atol=1e-7)
    # Duplicated rows: their distance (clamped to 1e-6) is still counted.
    student[1] = student[0]
    np.testing.assert_allclose(
        float(run(lambda: RKDDistance().compute_loss(teacher, student))),
        np_smooth_l1(np_distances(student), np_distances(teacher)),
        rtol=1e-4,
    )
    # Invariant to the scale of the student.
    np.testing.assert_allclose(
        float(run(lambda: RKDDistance().compute_loss(teacher, teacher * 7.0))),
        0.0,
        atol=1e-6,
    )


@pytest.mark.parametrize("term", [RKDAngle, RKDDistance])
def test_rkd_gradients_student_only_and_finite(term):
    student = rand((5, 4), seed=47)
    student[2] = student[1]  # coincident points must not give NaN
    teacher = rand((5, 4), seed=48)
    g_student, g_teacher = gradients(
        lambda s, t: term().compute_loss(t, s), student, teacher
    )
    assert_has_gradient(g_student)
    assert_no_gradient(g_teacher)


@pytest.mark.parametrize("term", [RKDAngle, RKDDistance])
def test_rkd_gradients_stay_small_for_computed_embeddings(term):
    # Under XLA (the JAX gradient helper is jitted) an embedding computed
    # in the graph can differ from itself by rounding noise in `e_i - e_i`;
    # the pairs i == i must still count as coincident, not as noise
    # directions with gradients of order 1 / noise.
    logits = rand((8, 5), seed=61)
    kernel = rand((5, 5), seed=62)
    teacher = np_softmax(rand((8, 5), seed=63)).astype("float32")

    def loss(z, k):
        return term().compute_loss(
            teacher, keras.ops.softmax(keras.ops.matmul(z, k) / 5.0)
        )

    g_logits, g_kernel = gradients(loss, logits, kernel)
    assert_has_gradient(g_logits)
    assert np.abs(g_logits).max() < 10.0 and np.abs(g_kernel).max() < 10.0


def test_rkd_rejects_lists_and_batch_mismatch():
    with pytest.raises(TypeError, match="integrated_target"):
        RKDAngle().compute_loss([rand((4, 3), 1)], rand((4, 3), 2))
    with pytest.raises(ValueError, match="same batch"):
        RKDDistance().compute_loss(rand((4, 3), 1), rand((5, 3), 2))


# --------------------------------------------------------------------------
# Serialization.
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "term",
    [
        AdaptiveEnsembleKD(temperature=5.0),
        AdaptiveEnsembleKD(),
        HintLoss(),
        RKDAngle(),
        RKDDistance(),
    ],
)
def test_loss_config_round_trip(term):
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(term)
    )
    assert type(restored) is type(term)
    assert restored.get_config() == term.get_config()
    assert type(term).from_config(term.get_config()).get_config() == term.get_config()


def test_layer_config_round_trip():
    importance = TeacherImportance(
        4,
        pooling="average",
        stop_gradient=False,
        l2=0.3,
        initializer_stddev=0.01,
        name="ti",
    )
    restored = TeacherImportance.from_config(importance.get_config())
    assert restored.get_config() == importance.get_config()
    assert restored.autocast is False
    regressor = HintRegressor(7, use_bias=True, name="hr")
    assert HintRegressor.from_config(regressor.get_config()).get_config() == (
        regressor.get_config()
    )


def test_keras_file_round_trip_keeps_weights(tmp_path):
    inputs = keras.Input((8, 8, 3))
    features = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    weights = TeacherImportance(3, pooling="average", l2=0.2, name="importance")(
        features
    )
    hint = HintRegressor(6, use_bias=True, name="regressor")(features)
    model = keras.Model(inputs, [weights, hint])
    importance = model.get_layer("importance")
    importance.theta.assign(rand((3, 4), seed=49))
    importance.w.assign(rand((4,), seed=50))
    model.get_layer("regressor").bias.assign(rand((6,), seed=51))
    path = str(tmp_path / "amtml.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    for name in ("importance", "regressor"):
        for a, b in zip(model.get_layer(name).weights, loaded.get_layer(name).weights):
            np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    assert loaded.get_layer("importance").get_config() == importance.get_config()
    x = rand((2, 8, 8, 3), seed=52)
    for a, b in zip(model(x), loaded(x)):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=1e-6)
    # The restored layer still carries its penalty.
    assert len(loaded.losses) == 2


# --------------------------------------------------------------------------
# Mixed precision.
# --------------------------------------------------------------------------


def test_mixed_bfloat16_gives_float32(edu_mixed_bfloat16_policy):

    def bf16(x):
        return keras.ops.cast(x, "bfloat16")

    importance = TeacherImportance(2)
    features = bf16(rand((3, 4, 4, 5), seed=53))
    weights = importance(features)
    assert dtype_of(weights) == "float32"
    assert (
        dtype_of(importance.theta) == "float32" and dtype_of(importance.w) == "float32"
    )
    # Symbolic use agrees.
    assert (
        importance.compute_output_spec(keras.KerasTensor((None, 5))).dtype == "float32"
    )

    teachers = [bf16(rand((3, 6), seed=s, scale=3.0)) for s in (54, 55)]
    student = bf16(rand((3, 6), seed=56, scale=3.0))
    kd = AdaptiveEnsembleKD(temperature=5.0)
    assert (
        dtype_of(
            run(
                lambda: kd.compute_loss(
                    teachers, student, teacher_weights=bf16(weights)
                )
            )
        )
        == "float32"
    )
    assert dtype_of(run(lambda: kd.per_sample_loss(teachers, student))) == "float32"

    regressor = HintRegressor(6)
    mapped = regressor(bf16(rand((3, 8, 8, 5), seed=57)))
    assert dtype_of(mapped) == "bfloat16"  # the regressor follows the policy
    assert dtype_of(regressor.kernel) == "float32"
    teacher_map = bf16(rand((3, 4, 4, 6), seed=58))
    assert (
        dtype_of(run(lambda: HintLoss().compute_loss(teacher_map, mapped))) == "float32"
    )

    target = bf16(rand((4, 6), seed=59, scale=1.0, low=0.0))
    probs = bf16(rand((4, 6), seed=60, scale=1.0, low=0.0))
    for term in (RKDAngle(), RKDDistance()):
        loss = run(lambda term=term: term.compute_loss(target, probs))
        assert dtype_of(loss) == "float32"
