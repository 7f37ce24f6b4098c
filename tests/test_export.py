"""Tests of recipes/export.py: parity of each format with Keras, bad input.

On the JAX and PyTorch backends the artefacts are written by a TensorFlow
subprocess (one for all formats, in a module fixture) and checked against
the current backend's predictions.
"""

import importlib.util
import os

import keras
import numpy as np
import pytest

pytest.importorskip("tensorflow")

import helpers  # noqa: E402

RECIPES = helpers.recipes_on_path()

import architectures  # noqa: E402
import cli  # noqa: E402
import export  # noqa: E402

import keras_edu  # noqa: E402


def _missing(fmt):
    return [
        pip
        for module, pip in export.PACKAGES[fmt].items()
        if importlib.util.find_spec(module) is None
    ]


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A graduated ED student (nested stage models), saved as `.keras`."""
    keras.utils.set_random_seed(3)
    target = architectures.build_model("cnn4", 10, (28, 28, 1), name="student")
    partition = keras_edu.ClassPartition.contiguous(10, "1:1:1")
    graded = keras_edu.GradedStudent.from_model(
        target,
        split_at=keras_edu.models.stage_ends(target),
        partition=partition,
    )
    model = graded.graduate()
    # Non-trivial BatchNorm statistics, so that inference mode matters.
    for layer in target.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(
                np.full(layer.moving_mean.shape, 0.1, "float32")
            )
            layer.moving_variance.assign(
                np.full(layer.moving_variance.shape, 2.0, "float32")
            )
    path = tmp_path_factory.mktemp("student") / "student.keras"
    model.save(path)
    return str(path)


@pytest.fixture(scope="module")
def reports(student, tmp_path_factory):
    """Exports to every format whose packages are installed, in one call."""
    out = tmp_path_factory.mktemp("export")
    names = {
        "tf_saved_model": "saved_model",
        "litert": "s.tflite",
        "onnx": "s.onnx",
    }
    targets = {
        fmt: str(out / name) for fmt, name in names.items() if not _missing(fmt)
    }
    if not targets:
        return {}
    return {r["format"]: r for r in export.export_student(student, targets)}


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_export_matches_keras(reports, fmt):
    if _missing(fmt):
        pytest.skip(
            f"--format={fmt} needs {', '.join(_missing(fmt))}: pip install "
            "'keras-edu[export]'."
        )
    report = reports[fmt]
    assert report["passed"] and report["max_abs_diff"] <= 1e-4
    assert report["reference_backend"] == keras.backend.backend()
    assert os.path.exists(report["out"])


def test_cli_refuses_an_existing_output_and_checks_suffixes(student, tmp_path):
    existing = tmp_path / "exists"
    existing.mkdir()
    with pytest.raises(cli.RecipeError, match="already exists.*--overwrite"):
        export.run([f"--student={student}", f"--out={existing}"])
    with pytest.raises(cli.RecipeError, match="must end with `.tflite`"):
        export.run(
            [
                f"--student={student}",
                "--format=litert",
                f"--out={tmp_path / 'a.onnx'}",
            ]
        )
    with pytest.raises(
        cli.RecipeError, match="Valid formats: tf_saved_model, litert, onnx"
    ):
        export.run(
            [
                f"--student={student}",
                "--format=coreml",
                f"--out={tmp_path / 'a'}",
            ]
        )
    with pytest.raises(cli.RecipeError, match="no such `.keras` file"):
        export.run(
            [
                f"--student={tmp_path / 'missing.keras'}",
                f"--out={tmp_path / 'a'}",
            ]
        )
    with pytest.raises(cli.RecipeError, match="one --out per format"):
        export.run(
            [
                f"--student={student}",
                "--format=onnx,litert",
                f"--out={tmp_path / 'a.onnx'}",
            ]
        )


def test_missing_packages_name_the_extra(student, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "onnxruntime" else real(name, *a),
    )
    with pytest.raises(
        cli.RecipeError,
        match=r"onnxruntime.*pip install 'keras-edu\[export\]'",
    ):
        export.run(
            [
                f"--student={student}",
                "--format=onnx",
                f"--out={tmp_path / 'a.onnx'}",
            ]
        )


def test_a_differing_artefact_fails(student, tmp_path, monkeypatch):
    # Skip the real export; the "artefact" answers Keras's logits + 1e-3.
    monkeypatch.setattr(export, "write_artefacts", lambda model, targets: None)
    monkeypatch.setattr(
        export, "_export_in_tensorflow_subprocess", lambda s, t: None
    )
    model = keras.saving.load_model(student, compile=False)
    monkeypatch.setitem(
        export.RUNNERS,
        "tf_saved_model",
        lambda path, x: model.predict(x, verbose=0) + 1e-3,
    )
    with pytest.raises(
        export.ParityError, match=r"tf_saved_model \(0.001\).*tolerance=0.0001"
    ):
        export.export_student(student, {"tf_saved_model": str(tmp_path / "sm")})
