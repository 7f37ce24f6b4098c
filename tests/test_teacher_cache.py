"""`Distiller(cache_teachers=...)`: teacher outputs computed once per sample."""

import keras
import numpy as np
import pytest
from keras import ops
from test_amtml import HINTS
from test_amtml import data as amtml_data
from test_amtml import make_distiller as make_amtml_distiller
from test_education import _CallCounter
from test_education import _data as graded_data
from test_education import _graded_student
from test_education import _specialist

import keras_edu
from keras_edu import teacher_cache

BACKEND = keras.backend.backend()
INPUT_SHAPE = (8, 8, 1)


def cnn(width, counts=None, key=None, augment=False):
    layers = [keras.Input(INPUT_SHAPE)]
    if counts is not None:
        layers.append(_CallCounter(counts, key))
    if augment:
        layers.append(keras.layers.RandomFlip("horizontal"))
    layers += [
        keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(width),
    ]
    return keras.Sequential(layers)


def plain_data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(n,) + INPUT_SHAPE).astype("float32"),
        rng.integers(0, 4, size=(n,)),
    )


def specialists(counts=None, augment=False):
    return [
        keras_edu.Teacher(cnn(2, counts, 0, augment), classes=[0, 1]),
        keras_edu.Teacher(cnn(2, counts, 1, augment), classes=[2, 3]),
        keras_edu.Teacher(cnn(4, counts, 2, augment)),
    ]


def cached_batch(distiller, x, y=None):
    """`x` with its teacher outputs, as `fit` feeds a cached step."""
    return teacher_cache.attach_for_fit(distiller, x, y)


def losses_live_and_cached(distiller, x, y):
    live = distiller.compute_loss(x=x, y=y, training=True)
    cached = distiller.compute_loss(x=cached_batch(distiller, x, y), y=y, training=True)
    return float(ops.convert_to_numpy(live)), float(ops.convert_to_numpy(cached))


# ------------------------------------------------------------ one batch's loss


@pytest.mark.parametrize("augment", [False, True], ids=["plain", "flip_layer"])
def test_cached_and_live_teachers_give_the_same_loss(augment):
    # A teacher runs in inference mode, where its augmentation layers are
    # identities: its outputs depend on the sample only, and caching is exact.
    x, y = plain_data()
    distiller = keras_edu.Distiller(
        cnn(4), specialists(augment=augment), cache_teachers=True
    )
    live, cached = losses_live_and_cached(distiller, x, y)
    assert np.isfinite(live) and live > 0
    assert abs(live - cached) < 1e-6


def test_amtml_hints_are_cached_and_give_the_same_loss():
    x, y = amtml_data(n=16)
    distiller = make_amtml_distiller()
    distiller.cache_teachers = True
    attached = cached_batch(distiller, x)
    hinted = {k for _, k, _ in HINTS}
    for k in range(3):
        cached = teacher_cache.outputs_of(attached, k)
        assert cached["logits"].shape == (16, 5)
        assert ("hints" in cached) == (k in hinted)
    live = distiller.compute_loss(x=x, y=y, training=True)
    cached = distiller.compute_loss(x=attached, y=y, training=True)
    np.testing.assert_allclose(
        ops.convert_to_numpy(cached), ops.convert_to_numpy(live), atol=1e-6
    )


# ------------------------------------------------------------------ fit


def test_cached_fit_trains_like_live_and_runs_each_teacher_once_per_sample():
    x, y = plain_data()
    counts = {}
    runs = {}
    for cache in (False, True):
        keras.utils.set_random_seed(1)
        counts.clear()
        distiller = keras_edu.Distiller(
            cnn(4), specialists(counts), cache_teachers=cache
        )
        distiller.compile(optimizer="sgd", jit_compile=False)
        for teacher in distiller.teachers:
            # A first predict traces the model on symbolic batches (torch),
            # which the counter would count; count the run's calls only.
            teacher.model.predict_on_batch(x[:2])
        counts.clear()
        history = distiller.fit(
            x, y, epochs=2, batch_size=16, shuffle=False, verbose=0
        )
        runs[cache] = (history.history, distiller.student.get_weights())
        teacher_rows = {k: sum(counts.get(k, [])) for k in range(3)}
        if cache:
            # The finite check's first batch (16 rows), then the fill: each
            # sample once through every teacher that teaches it (a
            # specialist its classes' samples, the generalist all 48), and
            # no teacher call in the 6 steps (live: 16 + 2 x 48 rows each).
            taught = [int(np.isin(y, [0, 1]).sum()), int(np.isin(y, [2, 3]).sum()), 48]
            assert teacher_rows == {k: 16 + n for k, n in enumerate(taught)}
            assert distiller.teacher_cache_examples == taught
            assert distiller.teacher_cache_seconds > 0
    for key in ("loss", "distillation_loss"):
        np.testing.assert_allclose(runs[True][0][key], runs[False][0][key], atol=1e-5)
    for cached, live in zip(runs[True][1], runs[False][1]):
        np.testing.assert_allclose(cached, live, atol=1e-5)


def test_graded_student_with_grade_switches_trains_like_live():
    partition = keras_edu.ClassPartition.contiguous(6, "1:1:1")
    x, y = graded_data()
    runs = {}
    for cache in (False, True):
        keras.utils.set_random_seed(2)
        student = _graded_student(partition)
        teachers = [_specialist(g) for g in partition.groups]
        distiller = keras_edu.Distiller(student, teachers, cache_teachers=cache)
        distiller.compile(optimizer="sgd")
        history = distiller.fit(
            x, y, epochs=3, batch_size=12, verbose=0,
            callbacks=[keras_edu.GradeCallback(boundaries=[1, 2], seed=0)],
        )
        assert distiller.grade == 3
        runs[cache] = (history.history, distiller.student.get_weights())
    np.testing.assert_allclose(
        runs[True][0]["loss"], runs[False][0]["loss"], atol=1e-5
    )
    for cached, live in zip(runs[True][1], runs[False][1]):
        np.testing.assert_allclose(cached, live, atol=1e-4)


def test_the_cache_runs_a_specialist_on_its_own_samples_only():
    # A graded student with a generalist over the seen classes and the
    # specialists retired at the last grade (the defaults): specialists 1
    # and 2 are cached for their group's samples (the other rows stay zero),
    # the generalist for all. Group 3 is first seen at grade 3, when the
    # specialists have retired, so its specialist never teaches: no row.
    partition = keras_edu.ClassPartition.contiguous(6, "1:1:1")
    x, y = graded_data()
    full = keras_edu.Teacher(cnn(6))
    teachers = [_specialist(g) for g in partition.groups] + [full]
    distiller = keras_edu.Distiller(
        _graded_student(partition), teachers, cache_teachers=True
    )
    attached = cached_batch(distiller, x, y)
    groups = [np.flatnonzero(np.isin(y, g)) for g in partition.groups]
    groups[2] = groups[2][:0]
    assert distiller.teacher_cache_examples == [24, 24, 0, 72]
    for k, rows in enumerate(groups):
        logits = teacher_cache.outputs_of(attached, k)["logits"]
        if len(rows):
            np.testing.assert_allclose(
                logits[rows], distiller.teachers[k].model.predict(x[rows], verbose=0),
                atol=1e-6,
            )
        others = np.setdiff1d(np.arange(len(x)), rows)
        assert not logits[others].any()
    # One-hot labels name the same samples.
    cached_batch(distiller, x, np.eye(6)[y])
    assert distiller.teacher_cache_examples == [24, 24, 0, 72]
    # The training cost counts each teacher's pass over its samples, once.
    cost = keras_edu.cost.TrainingCost(batch_size=12)
    cost.set_model(distiller)
    flops = [keras_edu.cost.forward_flops(t) for t in teachers]
    assert cost.teacher_cache_flops() == sum(
        n * f for n, f in zip(distiller.teacher_cache_examples, flops)
    )


def test_memmap_cache_in_a_directory(tmp_path):
    x, y = plain_data()
    directory = tmp_path / "cache"
    distiller = keras_edu.Distiller(
        cnn(4), specialists(), cache_teachers=str(directory)
    )
    distiller.compile(optimizer="sgd")
    history = distiller.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    files = sorted(p.name for p in directory.iterdir())
    assert files == [f"teacher_{k}_logits.npy" for k in range(3)]
    stored = np.load(directory / "teacher_2_logits.npy")
    np.testing.assert_allclose(
        stored, distiller.teachers[2].model.predict(x, verbose=0), atol=1e-6
    )


# ------------------------------------------------------- refusals and config


def test_a_dataset_is_refused_with_the_reason():
    tf = pytest.importorskip("tensorflow")
    x, y = plain_data()
    distiller = keras_edu.Distiller(cnn(4), specialists(), cache_teachers=True)
    distiller.compile(optimizer="sgd")
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    with pytest.raises(ValueError, match="NumPy array.*augmentation"):
        distiller.fit(dataset, epochs=1, verbose=0)


@pytest.mark.parametrize("bad", [None, "", 1, "memory "[:0]])
def test_bad_cache_setting(bad):
    with pytest.raises(ValueError, match="`cache_teachers` must be"):
        keras_edu.Distiller(cnn(4), specialists(), cache_teachers=bad)


def test_config_round_trip_keeps_the_setting():
    distiller = keras_edu.Distiller(cnn(4), specialists(), cache_teachers="/tmp/c")
    clone = keras_edu.Distiller.from_config(distiller.get_config())
    assert clone.cache_teachers == "/tmp/c"
    default = keras_edu.Distiller(cnn(4), specialists())
    assert default.cache_teachers is False
