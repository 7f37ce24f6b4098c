"""Regression: a teacher trained with compile()/fit() must not leak its metrics."""

import keras
import numpy as np

import keras_edu


def test_compiled_teacher_does_not_shadow_distiller_logs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    teacher = keras.Sequential([keras.Input((6,)), keras.layers.Dense(2)])
    teacher.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    teacher.fit(x, y, epochs=1, verbose=0)
    student = keras.Sequential([keras.Input((6,)), keras.layers.Dense(2)])
    distiller = keras_edu.Distiller(student, [teacher], alpha=0.5)
    distiller.compile("sgd", metrics=["accuracy"])
    logs = distiller.fit(x, y, epochs=1, batch_size=64, verbose=0).history
    # One batch: the logged loss is this step's total, never the teacher's
    # untouched tracker (0.0).
    expected = 0.5 * logs["student_loss"][0] + 0.5 * logs["distillation_loss"][0]
    np.testing.assert_allclose(logs["loss"][0], expected, rtol=1e-5)
    assert logs["loss"][0] > 0 and logs["accuracy"][0] > 0
    evaluation = distiller.evaluate(x, y, verbose=0, return_dict=True)
    assert evaluation["loss"] > 0 and evaluation["accuracy"] > 0
