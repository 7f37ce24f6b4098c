r"""The whole story on Fashion-MNIST, offline: teachers, then scratch vs KD vs ED.

Trains one full teacher and three specialists (one per class group of
`1:1:1`: classes 0-2, 3-5, 6-9) with `train_teacher.py`'s functions, then
three students of the same architecture and epoch budget with
`distill.py`'s: from scratch, with Hinton KD from the full teacher, and
with education distillation from the three specialists and the full
teacher over the classes seen so far, the specialists retired at the last
grade (the student grows one stage per grade). Prints the comparison table, writes a results JSON
(and one JSON per student, as `distill.py` does), saves every student as a
`.keras` file that loads without keras_edu, and exports the graduated ED
student with `export.py`'s functions (checked against Keras).

Usage:

    python recipes/fashion_mnist.py           # under 15 minutes on one CPU core
                                              # (about 7 on the bundled subset)
    python recipes/fashion_mnist.py --quick   # about 1.5 minutes
    KERAS_BACKEND=jax python recipes/fashion_mnist.py --seed=1

Data: the full set from local files (the Keras cache, or Debian's package:
`apt-get install dataset-fashion-mnist`), downloaded by Keras only when
neither exists; when that fails too (a fresh machine without network), the
20,000 + 5,000-image subset bundled with keras_edu, so the job runs
anywhere. `--data_dir` points at another copy of the four IDX files. The
tables and the results JSON (`data`) say which data the run used.
"""

import os

from absl import flags
import keras

import architectures
import cli
import data_loading
import distill
import export
from keras_edu import data as edu_data
import train_teacher
import training


def define_flags(flag_values):
    fv = {"flag_values": flag_values}
    flags.DEFINE_bool(
        "quick",
        False,
        "A small, fast run: 3,000 training and 2,000 test images, teachers "
        "2 epochs, students 3 epochs (grades at 1, 2). Flags given on the "
        "command line still win.",
        **fv,
    )
    flags.DEFINE_integer(
        "seed", 0, "Random seed of weights, shuffles and subsets.", **fv
    )
    flags.DEFINE_integer("teacher_epochs", 5, "Epochs of each teacher.", **fv)
    flags.DEFINE_integer(
        "epochs",
        6,
        "Epochs of each student (the same budget for every method).",
        **fv,
    )
    flags.DEFINE_list(
        "boundaries",
        ["2", "4"],
        "When ED grades 2 and 3 start: epochs (`2,4`) or fractions of "
        "--epochs (`0.625,0.75`, the reference's shape).",
        **fv,
    )
    flags.DEFINE_integer("batch_size", 128, "Batch size.", **fv)
    flags.DEFINE_string(
        "compilation_cache",
        "",
        "JAX only: a directory where XLA keeps compiled steps, so a later "
        "run (another seed, a rerun) skips most compilation. Empty: none.",
        **fv,
    )
    flags.DEFINE_float("lr", 0.05, "Learning rate of SGD (momentum 0.9).", **fv)
    flags.DEFINE_list(
        "lr_decay_epochs",
        ["-1"],
        "Epochs at which the learning rate is multiplied by 0.1, for "
        "teachers and students; negative values count from the end (-1: "
        "the last epoch), so that BatchNorm statistics settle before the "
        "final evaluation.",
        **fv,
    )
    flags.DEFINE_float(
        "weight_decay", 5e-4, "Weight decay of the kernels.", **fv
    )
    flags.DEFINE_string(
        "teacher",
        "cnn16",
        "Teacher architecture (a keras_edu.models name or cnn<W>).",
        **fv,
    )
    flags.DEFINE_string(
        "student",
        "cnn4",
        "Student architecture (a keras_edu.models name or cnn<W>).",
        **fv,
    )
    flags.DEFINE_integer(
        "train_size",
        0,
        "Use only this many training images (0: all 60,000).",
        **fv,
    )
    flags.DEFINE_integer(
        "test_size", 0, "Use only this many test images (0: all 10,000).", **fv
    )
    flags.DEFINE_string(
        "data_dir",
        None,
        "Folder with the four Fashion-MNIST IDX files (default: the Keras "
        "cache, then /usr/share/datasets/fashion-mnist, the Keras download, "
        "then the subset bundled with keras_edu).",
        **fv,
    )
    flags.DEFINE_string(
        "out_dir",
        "runs/fashion_mnist",
        "Where to write results, models and the export.",
        **fv,
    )
    flags.DEFINE_bool(
        "overwrite", False, "Overwrite results already in --out_dir.", **fv
    )
    flags.DEFINE_list(
        "export",
        ["tf_saved_model"],
        "Formats to export the ED student to (tf_saved_model, litert, onnx; "
        "empty: none).",
        **fv,
    )
    flags.DEFINE_integer("verbose", None, training.VERBOSE_HELP, **fv)


QUICK = {
    "teacher_epochs": 2,
    "epochs": 3,
    "boundaries": ["1", "2"],
    "train_size": 3000,
    "test_size": 2000,
}
# Each student and the teachers it learns from (see `output_paths`).
# ED learns from the specialists and from the full teacher over the seen
# classes, the specialists retired at the last grade (the measured best:
# docs/results.md).
METHODS = {"scratch": (), "kd": ("full",), "ed": ("specialists", "full")}
EXPORT_SUFFIXES = {
    "tf_saved_model": "_saved_model",
    "litert": ".tflite",
    "onnx": ".onnx",
}


def output_paths(out_dir, seed, formats):
    """Every file the job writes, by role, for one seed."""
    tag = f"seed{seed}"
    teachers = os.path.join(out_dir, f"teachers_{tag}")

    def student(method, suffix):
        return os.path.join(out_dir, f"student_{method}_{tag}{suffix}")

    return {
        "results": os.path.join(out_dir, f"results_{tag}.json"),
        "teachers": {
            "full": [os.path.join(teachers, "teacher_full.keras")],
            "specialists": [
                os.path.join(teachers, f"teacher_group{k}.keras")
                for k in (1, 2, 3)
            ],
        },
        "manifests": {
            "full": os.path.join(teachers, "full.json"),
            "specialists": os.path.join(teachers, "specialists.json"),
        },
        "students": {m: student(m, ".keras") for m in METHODS},
        "student_results": {m: student(m, ".json") for m in METHODS},
        "export": {fmt: student("ed", EXPORT_SUFFIXES[fmt]) for fmt in formats},
    }


def _from_end(epochs, total):
    """Negative epochs count from the end; 0 and epochs past the end drop."""
    absolute = [e if e >= 0 else total + e for e in epochs]
    return tuple(sorted(e for e in absolute if 0 < e < total))


def locate_data(data_dir):
    """Which Fashion-MNIST the job reads: `load_fashion_mnist`'s info dict.

    The folder it found is then passed on as the data folder, so the job
    reads exactly the data the info describes. `None` when nothing was
    found: `data_loading.load_data` then raises its error, which says how
    to get the data.
    """
    try:
        _, info = edu_data.load_fashion_mnist(data_dir, with_info=True)
    except FileNotFoundError:
        return None
    return info


def data_label(info):
    """A short name of the data for the table titles."""
    if info is None or info["source"] != "bundled":
        return "Fashion-MNIST"
    return "Fashion-MNIST, bundled subset"


def _all_paths(paths):
    for value in paths.values():
        if isinstance(value, str):
            yield value
        else:
            for item in value.values():
                yield from [item] if isinstance(item, str) else item


def body(flag_values):
    if flag_values.quick:
        cli.apply_overrides(flag_values, QUICK, "--quick")
    seed = flag_values.seed
    formats = [f for f in flag_values.export if f]
    for fmt in formats:
        export.check_format(fmt)
    architectures.check_arch(flag_values.teacher, "teacher")
    architectures.check_arch(flag_values.student, "student")
    training.enable_compilation_cache(flag_values.compilation_cache)
    paths = output_paths(flag_values.out_dir, seed, formats)
    for path in _all_paths(paths):
        cli.check_output_path(path, flag_values.overwrite, "out_dir")

    decays = cli.int_list(flag_values.lr_decay_epochs, "lr_decay_epochs")
    settings = training.TrainSettings(
        epochs=flag_values.epochs,
        lr_decay_epochs=_from_end(decays, flag_values.epochs),
        batch_size=flag_values.batch_size,
        lr=flag_values.lr,
        weight_decay=flag_values.weight_decay,
        seed=seed,
        verbose=flag_values.verbose,
    )
    # Epochs or fractions of --epochs; `distill.check_boundaries` resolves
    # them with `keras_edu.GradeCallback`, as the distill recipe does.
    boundaries = cli.number_list(flag_values.boundaries, "boundaries")
    data_info = locate_data(flag_values.data_dir)
    data = data_loading.load_data(
        "fashion_mnist",
        data_dir=(data_info or {}).get("directory") or flag_values.data_dir,
        train_size=flag_values.train_size,
        test_size=flag_values.test_size,
        seed=seed,
    )
    partition = data_loading.parse_partition("1:1:1", data.num_classes)
    boundaries = distill.check_boundaries(
        boundaries, "ed", partition, settings.epochs
    )
    keras.utils.set_random_seed(seed)

    teacher_settings = training.TrainSettings(
        **dict(
            settings.as_dict(),
            epochs=flag_values.teacher_epochs,
            lr_decay_epochs=_from_end(decays, flag_values.teacher_epochs),
        )
    )
    entries = []
    for kind, groups in (("full", None), ("specialists", partition)):
        trained = train_teacher.train_teachers(
            data,
            flag_values.teacher,
            groups,
            teacher_settings,
            paths["teachers"][kind],
        )
        cli.write_json(
            paths["manifests"][kind],
            train_teacher.manifest(
                data, flag_values.teacher, groups, teacher_settings, trained
            ),
        )
        entries.extend(trained)

    results = []
    for method, kinds in METHODS.items():
        options = distill.DistillOptions(
            method=method,
            student=flag_values.student,
            partition=partition,
            boundaries=boundaries,
        )
        options.teachers = [
            teacher
            for kind in kinds
            for teacher in distill.load_teachers(
                paths["manifests"][kind], data, method, partition
            )
        ]
        result = distill.distill(
            data, options, settings, paths["students"][method]
        )
        result["quick"] = bool(flag_values.quick)
        cli.write_json(paths["student_results"][method], result)
        results.append(result)

    exports = []
    if formats:
        print("\n== Export of the ED student")
        exports = export.export_student(
            paths["students"]["ed"],
            paths["export"],
            overwrite=flag_values.overwrite,
        )
    report = {
        "recipe": "fashion_mnist",
        "dataset": "fashion_mnist",
        "data": data_info,
        **cli.run_facts(seed),
        "quick": bool(flag_values.quick),
        "teacher_epochs": flag_values.teacher_epochs,
        "teachers": entries,
        "students": results,
        "exports": exports,
    }
    cli.write_json(paths["results"], report)
    if data_info is not None:
        print(
            f"\nData: {data_info['description']}; this run trained on "
            f"{results[0]['train_examples']:,} and tested on "
            f"{results[0]['test_examples']:,} of them."
        )
    train_teacher.print_summary(entries)
    label = data_label(data_info)
    distill.print_summary([dict(r, dataset=label) for r in results])
    print(f"\nResults: {paths['results']}")
    return report


main, run = cli.entry_points(define_flags, body)

if __name__ == "__main__":
    cli.launch(define_flags, main)
