"""The prepared GPU check (benchmarks/gpu_check.py) runs, at dry-run sizes, on a CPU."""

import importlib.util
import math
import os

import keras
import pytest

_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "gpu_check.py")
_spec = importlib.util.spec_from_file_location("gpu_check", _PATH)
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


def test_an_ed_run_under_mixed_precision_switches_twice_and_stays_finite():
    row = gpu_check.time_run("ed", "mixed_bfloat16", gpu_check.DRY)
    assert row["grade"] == 3
    assert row["finite"] and math.isfinite(row["final_loss"])
    # 2 epochs in grades 1 and 2, then warm-up and timed epochs in grade 3.
    assert len(row["epoch_seconds"]) == 2 + gpu_check.DRY["warmup"] + gpu_check.DRY["epochs"]
    assert row["steps_per_s"] > 0
    # The check leaves the global policy as it found it.
    assert keras.mixed_precision.global_policy().name == "float32"


def test_the_student_baseline_and_kd_rows():
    for run in ("student", "kd"):
        row = gpu_check.time_run(run, "float32", gpu_check.DRY)
        assert row["finite"] and row["grade"] is None


def test_speedups_and_table_report_errors_and_skips():
    result = {"backend": "jax", "device": "cpu", "rows": [
        {"run": "kd", "policy": "float32", "steps_per_s": 10.0, "final_loss": 1.0,
         "finite": True, "grade": None},
        {"run": "kd", "policy": "mixed_bfloat16", "steps_per_s": 25.0,
         "final_loss": 1.0, "finite": True, "grade": None},
        {"run": "ed", "policy": "mixed_float16", "error": "ValueError: boom"},
    ]}
    gpu_check.speedups(result)
    assert result["rows"][1]["speedup"] == pytest.approx(2.5)
    text = gpu_check.table([result, {"backend": "tensorflow", "skipped": "not installed",
                                     "rows": []}])
    assert "| 25.0 | 2.50x |" in text
    assert "error: ValueError: boom" in text
    assert "skipped: not installed" in text


def test_bad_flags_name_the_flag():
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--policies", "float64"])
    args = gpu_check.parse_args(["--dry-run", "--batch-size", "8", "--width", "0.5"])
    assert gpu_check._sizes(args) == dict(gpu_check.DRY, batch_size=8, samples=320, width=0.5)
