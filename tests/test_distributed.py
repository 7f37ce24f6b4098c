"""Data-parallel distillation: keras.distribution (JAX), MirroredStrategy (TF), PyTorch's refusal."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_edu

BACKEND = keras.backend.backend()
WORKER = os.path.join(os.path.dirname(__file__), "distributed_worker.py")


def _run_worker(case):
    # A subprocess: the 2 devices must exist before the framework starts,
    # and the rest of the suite keeps one.
    done = subprocess.run([sys.executable, WORKER, BACKEND, case],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _check_parity(result, grade):
    assert result["devices"] == 2
    assert result["steps"][0] == result["steps"][1] > 0
    assert result["loss_diff"] < 1e-5
    assert result["weight_diff"] < 1e-4
    # The student's (and, for ED, every new grade's) variables, the rebuilt
    # optimizer's and the teachers' are all replicated on both devices.
    assert result["meshes"] == ["2 devices"]
    assert result["teacher_meshes"] == ["2 devices"]
    assert result["grade"] == grade


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution runs on JAX")
@pytest.mark.parametrize("case", ["kd", "specialists", "ed"])
def test_data_parallel_on_two_devices_matches_one_device(case):
    _check_parity(_run_worker(case), 3 if case == "ed" else None)


def _check_amtml(result, layers):
    # The Distiller's own trained layers (the TeacherImportance of the
    # grade, the hint regressors) are trained and replicated like the
    # student's, and end equal to one device's.
    assert result["amtml_layers"] == layers
    assert result["amtml_trained"]
    assert result["amtml_meshes"] == ["2 devices"]
    assert result["amtml_weight_diff"] < 1e-4


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution runs on JAX")
@pytest.mark.parametrize("case, layers, grade", [
    ("amtml", ["teacher_importance", "hint_regressor_0"], None),
    ("ed_amtml", ["teacher_importance_grade3", "hint_regressor_0"], 3),
])
def test_data_parallel_amtml_on_two_devices_matches_one_device(case, layers, grade):
    result = _run_worker(case)
    _check_parity(result, grade)
    _check_amtml(result, layers)


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution runs on JAX")
@pytest.mark.xfail(strict=True, reason=(
    "AMTML's RKD angle term on 2-class groups: a group's softened outputs "
    "lie on a line, every angle is 0 or 180 degrees, so the term's exact "
    "gradient is 0 and the float32 one is rounding noise scaled by "
    "1/|s_i - s_j|; the sharded step rounds differently and the runs part "
    "(loss difference 4e-2, weights 0.45 after 9 steps)"))
def test_data_parallel_ed_amtml_with_angle_on_2_class_groups():
    _check_parity(_run_worker("ed_amtml_angle"), 3)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute")
@pytest.mark.parametrize("case", ["kd", "specialists"])
def test_mirrored_strategy_on_two_devices_matches_one_device(case):
    # Before the loss was divided by the replicas, each step was twice
    # one device's (loss difference 1.07 after 12 steps).
    _check_parity(_run_worker(case), None)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute")
def test_mirrored_strategy_amtml_without_relational_terms_matches_one_device():
    # KD, hint and L2 terms are means over rows (or batch constants), so the
    # replicas' shares add up to one device's loss.
    result = _run_worker("amtml_no_angle")
    _check_parity(result, None)
    _check_amtml(result, ["teacher_importance", "hint_regressor_0"])


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute")
@pytest.mark.xfail(strict=True, reason=(
    "AMTML's RKD angle (and distance) terms relate the rows of a batch: "
    "each MirroredStrategy replica computes them over its half of the "
    "batch, and the mean of two half-batch terms is not the global batch's "
    "(loss difference 1.9e-2, weights 7e-2 after 12 steps)"))
def test_mirrored_strategy_amtml_with_angle_matches_one_device():
    _check_parity(_run_worker("amtml"), None)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute")
def test_mirrored_strategy_refuses_education_distillation():
    result = _run_worker("ed")
    assert "does not run under a tf.distribute strategy" in result["refused"]
    assert "keras.distribution.DataParallel" in result["refused"]


@pytest.mark.skipif(BACKEND != "torch", reason="the PyTorch trainer's refusal")
def test_torch_refuses_a_distribution_it_would_ignore():
    student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    distiller = keras_edu.Distiller(student, [keras_edu.Teacher(teacher)])
    distiller.compile("sgd")
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=["cpu:0", "cpu:1"]))
    try:
        with pytest.raises(ValueError, match="PyTorch trainer runs `fit` on one device"):
            distiller.fit(np.zeros((4, 4), "float32"), np.zeros(4, "int32"), verbose=0)
    finally:
        keras.distribution.set_distribution(None)
    distiller.fit(np.zeros((4, 4), "float32"), np.zeros(4, "int32"), verbose=0)
