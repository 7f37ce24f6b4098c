r"""Exports a trained student for serving and checks it against Keras.

`model.export(...)` writes the artefact, then its own runtime runs it on a
batch and the result is compared with the Keras model's predictions:

| `--format` | artefact | checked with |
|---|---|---|
| `tf_saved_model` | a SavedModel folder (endpoint `serve`) | TensorFlow |
| `litert` | a `.tflite` file | the LiteRT interpreter (`ai-edge-litert`) |
| `onnx` | a `.onnx` file | ONNX Runtime |

The maximum absolute difference of the logits is printed; the recipe fails
when it is above `--tolerance` (1e-4, for float32 models).

A student trained on any backend works: the `.keras` file is reloaded
under the TensorFlow backend to export (in a subprocess when the current
backend is JAX or PyTorch), because Keras's exporters of those backends
need other converters (`jax2onnx`, `onnxscript`, `litert-torch`). The
reference predictions come from the current backend, so the check also
covers the change of backend. Needs `pip install 'keras-edu[export]'`
(tensorflow, tf2onnx, onnx, onnxruntime, ai-edge-litert).

Usage:

    python recipes/export.py --student=runs/ed.keras --format=onnx \
        --out=runs/ed.onnx
    KERAS_BACKEND=torch python recipes/export.py --student=runs/ed.keras \
        --format=litert --out=runs/ed.tflite
"""

import importlib.util
import os
import subprocess
import sys
import time

from absl import flags
import keras
import numpy as np

import architectures
import cli

FORMATS = ("tf_saved_model", "litert", "onnx")
# The file suffix each format needs (`None`: a folder).
SUFFIXES = {"tf_saved_model": None, "litert": ".tflite", "onnx": ".onnx"}
# Import names of the packages each format needs, and their pip names.
PACKAGES = {
    "tf_saved_model": {"tensorflow": "tensorflow-cpu"},
    "litert": {
        "tensorflow": "tensorflow-cpu",
        "ai_edge_litert": "ai-edge-litert",
    },
    "onnx": {
        "tensorflow": "tensorflow-cpu",
        "tf2onnx": "tf2onnx",
        "onnx": "onnx",
        "onnxruntime": "onnxruntime",
    },
}


class ParityError(RuntimeError):
    """The exported artefact disagrees with the Keras model."""


def define_flags(flag_values):
    flags.DEFINE_string(
        "student",
        None,
        "The trained student, a `.keras` file.",
        flag_values=flag_values,
    )
    flags.mark_flag_as_required("student", flag_values=flag_values)
    flags.DEFINE_list(
        "format",
        ["tf_saved_model"],
        "Export format: tf_saved_model, litert or onnx (or several, "
        "comma-separated, with as many --out paths).",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "out",
        [],
        "Output path: a folder for tf_saved_model, a `.tflite` file for "
        "litert, a `.onnx` file for onnx.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "overwrite",
        False,
        "Replace an existing output.",
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "tolerance",
        1e-4,
        "Largest accepted absolute difference between the artefact's and "
        "Keras's logits (1e-4 suits float32 models).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "batch_size",
        8,
        "Size of the random batch the check runs on.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "seed",
        0,
        "Seed of the check's random batch.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "export_only",
        False,
        "Internal: only write the artefacts (the TensorFlow-backend "
        "subprocess of a JAX or PyTorch run).",
        flag_values=flag_values,
    )


def check_format(fmt, out=None):
    """Validates a format, its output path's form, and its packages."""
    if fmt not in FORMATS:
        raise cli.RecipeError(
            f"Unknown --format={fmt}. Valid formats: {', '.join(FORMATS)}."
        )
    suffix = SUFFIXES[fmt]
    if out is not None and suffix and not out.endswith(suffix):
        raise cli.RecipeError(
            f"--format={fmt} writes a `{suffix}` file: --out must end with "
            f"`{suffix}`. Received: --out={out}."
        )
    if (
        out is not None
        and suffix is None
        and out.endswith((".keras", ".tflite", ".onnx", ".h5"))
    ):
        raise cli.RecipeError(
            f"--format={fmt} writes a folder; --out={out} looks like a file "
            "name. Pass a folder path."
        )
    missing = [
        pip
        for module, pip in PACKAGES[fmt].items()
        if importlib.util.find_spec(module) is None
    ]
    if missing:
        raise cli.RecipeError(
            f"--format={fmt} needs {', '.join(missing)}, which is not "
            "installed. Install the export extra: pip install "
            f"'keras-edu[export]' (or: pip install {' '.join(missing)})."
        )


def check_targets(student, targets, overwrite):
    """Validates the student path, formats, output paths and packages."""
    if not student or not os.path.isfile(student):
        raise cli.RecipeError(f"--student={student}: no such `.keras` file.")
    if not targets:
        raise cli.RecipeError(
            "--out is required: the path of the exported artefact."
        )
    for fmt, out in targets.items():
        check_format(fmt, out)
        cli.check_output_path(out, overwrite, "out")


def export_student(
    student, targets, overwrite=False, tolerance=1e-4, batch_size=8, seed=0
):
    """Exports a `.keras` student to each format and checks each artefact.

    Args:
        student: Path of the `.keras` file.
        targets: `{format: output path}`.
        overwrite: Replace existing outputs.
        tolerance: Largest accepted max absolute difference of the logits.
        batch_size: Size of the random check batch.
        seed: Seed of the check batch.

    Returns:
        One report dict per format: `format`, `out`, `max_abs_diff`,
        `tolerance`, `passed`, `reference_backend`, `export_backend`,
        `batch_shape`, `export_seconds`.

    Raises:
        ParityError: An artefact differs from Keras by more than
            `tolerance` (after every format was checked).
    """
    check_targets(student, targets, overwrite)
    model = architectures.load_model(student, "student")
    shape = tuple(model.inputs[0].shape[1:])
    if None in shape:
        raise cli.RecipeError(
            f"--student={student} takes inputs of shape {shape}; the check "
            "needs a fixed image size."
        )
    x = (
        np.random.default_rng(seed)
        .standard_normal((batch_size, *shape))
        .astype("float32")
    )
    reference = np.asarray(model.predict(x, verbose=0), "float32")
    for out in targets.values():
        if os.path.exists(out):
            cli.remove_path(out)
    start = time.perf_counter()
    if keras.backend.backend() == "tensorflow":
        write_artefacts(model, targets)
    else:
        _export_in_tensorflow_subprocess(student, targets)
    seconds = round(time.perf_counter() - start, 3)
    reports = []
    for fmt, out in targets.items():
        outputs = RUNNERS[fmt](out, x)
        diff = float(np.max(np.abs(outputs - reference)))
        passed = bool(diff <= tolerance)
        reports.append(
            {
                "format": fmt,
                "out": os.path.abspath(out),
                "max_abs_diff": diff,
                "tolerance": tolerance,
                "passed": passed,
                "reference_backend": keras.backend.backend(),
                "export_backend": "tensorflow",
                "batch_shape": list(x.shape),
                "export_seconds": seconds,
            }
        )
        status = "OK" if passed else "FAILED"
        print(
            f"{fmt}: {out}: max |artefact - Keras ({keras.backend.backend()})| "
            f"on a batch of {batch_size} = {diff:.3g} (tolerance "
            f"{tolerance:g}) {status}"
        )
    failed = [r for r in reports if not r["passed"]]
    if failed:
        raise ParityError(
            "The exported artefact(s) "
            + ", ".join(
                f"{r['format']} ({r['max_abs_diff']:.3g})" for r in failed
            )
            + f" differ from the Keras model by more than --tolerance={tolerance:g}."
        )
    return reports


def write_artefacts(model, targets):
    """`model.export` to every target (TensorFlow backend)."""
    for fmt, out in targets.items():
        model.export(out, format=fmt, verbose=False)


def _export_in_tensorflow_subprocess(student, targets):
    command = [
        sys.executable,
        os.path.abspath(__file__),
        f"--student={student}",
        f"--format={','.join(targets)}",
        f"--out={','.join(targets.values())}",
        "--export_only",
        "--overwrite",
    ]
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    process = subprocess.run(
        command, env=env, capture_output=True, text=True, check=False
    )
    if process.returncode != 0:
        raise RuntimeError(
            "Exporting under the TensorFlow backend failed:\n"
            + process.stdout[-3000:]
            + process.stderr[-3000:]
        )


def _run_saved_model(path, x):
    import tensorflow as tf

    loaded = tf.saved_model.load(path)  # Keep a reference while serving.
    return np.asarray(loaded.serve(x))


def _run_litert(path, x):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    (inputs,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(inputs["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inputs["index"], x)
    interpreter.invoke()
    (outputs,) = interpreter.get_output_details()
    return interpreter.get_tensor(outputs["index"])


def _run_onnx(path, x):
    import onnxruntime

    session = onnxruntime.InferenceSession(
        path, providers=["CPUExecutionProvider"]
    )
    (inputs,) = session.get_inputs()
    return session.run(None, {inputs.name: x})[0]


RUNNERS = {
    "tf_saved_model": _run_saved_model,
    "litert": _run_litert,
    "onnx": _run_onnx,
}


def body(flag_values):
    formats, outs = flag_values.format, flag_values.out
    if len(formats) != len(outs):
        raise cli.RecipeError(
            f"--format lists {len(formats)} format(s) but --out lists "
            f"{len(outs)} path(s); give one --out per format."
        )
    targets = dict(zip(formats, outs))
    if flag_values.export_only:
        model = architectures.load_model(flag_values.student, "student")
        # Keras exports only models that have been called once.
        shape = tuple(model.inputs[0].shape[1:])
        model.predict(np.zeros((1, *shape), "float32"), verbose=0)
        write_artefacts(model, targets)
        return None
    try:
        return export_student(
            flag_values.student,
            targets,
            overwrite=flag_values.overwrite,
            tolerance=flag_values.tolerance,
            batch_size=flag_values.batch_size,
            seed=flag_values.seed,
        )
    except ParityError as error:
        raise cli.RecipeError(str(error)) from None


main, run = cli.entry_points(define_flags, body)

if __name__ == "__main__":
    cli.launch(define_flags, main)
