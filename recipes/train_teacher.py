r"""Trains a full teacher, or the K specialist teachers of a class partition.

A full teacher learns every class. With `--partition=1:1:1` the classes are
split into contiguous groups (or explicit ones, `--partition=0,1;2,3,4`)
and one specialist per group learns only its group's classes, with local
labels (`global id -> position in the group`), as education distillation's
teachers do; wrap it as `keras_edu.Teacher(model, classes=group)`.

Writes one `.keras` file per teacher and a JSON manifest with each file's
classes and test top-1 (a specialist is scored on the test images of its
group). `distill.py --teachers=MANIFEST.json` reads the manifest.

Usage:

    python recipes/train_teacher.py --dataset=fashion_mnist --arch=cnn32 \
        --epochs=4 --out_dir=runs/teachers
    python recipes/train_teacher.py --partition=1:1:1 --arch=cnn32 \
        --out_dir=runs/specialists
    python recipes/train_teacher.py --config=cifar100_resnet110_resnet20 \
        --out_dir=runs/cifar100_resnet110          # 240 epochs
"""

import os

from absl import flags
import keras
import numpy as np

import architectures
import cli
import configs
import data_loading
from keras_edu import data as edu_data
import training

# `--config` keys read under another name by this recipe.
CONFIG_KEYS = {"arch": "teacher", "epochs": "teacher_epochs"}


def define_flags(flag_values):
    data_loading.define_data_flags(flag_values)
    training.define_training_flags(flag_values, configs.names())
    flags.DEFINE_string(
        "arch",
        "resnet20",
        "Teacher architecture: a keras_edu.models name (resnet8 ... "
        "resnet110, resnet8x4, resnet32x4, wrn_16_1 ... wrn_40_2) or "
        "`cnn<W>`, the recipes' 3-conv CNN (e.g. cnn32).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "partition",
        "",
        "Empty: one full teacher. Ratios such as `1:1:1` (contiguous class "
        "groups) or explicit groups `0,1,2;3,4,5;6,7,8,9`: one specialist "
        "per group, trained on that group's images with local labels.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "out_dir",
        "runs/teachers",
        "Folder of the `.keras` files and of the manifest.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "results",
        None,
        "Path of the JSON manifest (default: OUT_DIR/teachers.json).",
        flag_values=flag_values,
    )


def teacher_paths(out_dir, partition):
    """The `.keras` path of each teacher to train."""
    if partition is None:
        return [os.path.join(out_dir, "teacher_full.keras")]
    return [
        os.path.join(out_dir, f"teacher_group{k + 1}.keras")
        for k in range(partition.num_groups)
    ]


def train_teachers(data, arch, partition, settings, paths):
    """Trains and saves a full teacher or one specialist per group.

    Args:
        data: A `data_loading.Data`.
        arch: The architecture name (see `architectures.build_model`).
        partition: `None` for one full teacher, or a
            `keras_edu.ClassPartition` for one specialist per group.
        settings: A `training.TrainSettings`.
        paths: The `.keras` path of each teacher (`teacher_paths`).

    Returns:
        A list with one dict per teacher: `path`, `kind` (`"full"` or
        `"specialist"`), `group` (1-based, or `None`), `classes` (the global
        ids its logits cover, in order), `arch`, `top1` (test top-1 over
        its classes), `test_examples`, `params` and `epoch_seconds`.
    """
    if partition is None:
        jobs = [("full", None, list(range(data.num_classes)))]
    else:
        jobs = [
            ("specialist", k + 1, group)
            for k, group in enumerate(partition.groups)
        ]
    entries = []
    for (kind, group_id, classes), path in zip(jobs, paths):
        name = "teacher_full" if kind == "full" else f"teacher_group{group_id}"
        print(
            f"\n== {name}: {arch} on {len(classes)} classes"
            + (f" (group {group_id}: {classes})" if group_id else "")
        )
        train_source, train_arrays, (test_x, test_y) = _group_data(
            data, classes, kind
        )
        keras.utils.set_random_seed(settings.seed + (group_id or 0))
        model = architectures.build_model(
            arch, len(classes), data.image_shape, settings.weight_decay, name
        )
        seconds = training.fit_plain(
            model, data, settings, source=train_source, arrays=train_arrays
        )
        logits = model.predict(test_x, batch_size=256, verbose=0)
        top1 = float(np.mean(np.argmax(logits, axis=-1) == test_y))
        model.save(path)
        entries.append(
            {
                "path": os.path.abspath(path),
                "kind": kind,
                "group": group_id,
                "classes": [int(c) for c in classes],
                "arch": arch,
                "top1": top1,
                "test_examples": len(test_y),
                "params": int(model.count_params()),
                "epoch_seconds": seconds,
            }
        )
        print(
            f"{name}: test top-1 {top1:.4f} on {len(test_y)} images -> {path}"
        )
    return entries


def _group_data(data, classes, kind):
    """Training source/arrays and test arrays of one teacher, local labels."""
    if kind == "full":
        return data.train, data.train_arrays, (data.test_x, data.test_y)
    try:
        (test,) = edu_data.split_by_groups(
            (data.test_x, data.test_y), [classes]
        )
        if data.train_arrays is not None:
            (arrays,) = edu_data.split_by_groups(data.train_arrays, [classes])
            return None, arrays, test
        (source,) = edu_data.split_by_groups(data.train, [classes])
    except ValueError as error:
        raise cli.RecipeError(
            f"--partition: the group of classes {classes} cannot be trained: "
            f"{error} Use a partition whose groups all have training and test "
            "images (or more --train_size/--test_size)."
        ) from None
    return source, None, test


def manifest(data, arch, partition, settings, entries):
    """The JSON manifest that `distill.py --teachers=` reads."""
    return {
        "recipe": "train_teacher",
        "dataset": data.name,
        **cli.run_facts(settings.seed),
        "arch": arch,
        "num_classes": data.num_classes,
        "class_names": list(data.class_names),
        "partition": partition.groups if partition is not None else None,
        "preprocessing": data.preprocessing(),
        "settings": settings.as_dict(),
        "teachers": entries,
    }


def print_summary(entries, file=None):
    cli.print_table(
        entries,
        [
            ("teacher", lambda e: os.path.basename(e["path"]), "s"),
            ("kind", "kind", "s"),
            ("classes", lambda e: str(len(e["classes"])), "s"),
            ("test top-1", "top1", ".4f"),
            ("params", "params", ",d"),
            ("s/epoch", lambda e: float(np.mean(e["epoch_seconds"])), ".1f"),
        ],
        title="Teachers",
        file=file,
    )


def body(flag_values):
    cli.resolve_flags(flag_values, configs, CONFIG_KEYS)
    settings = training.settings_from_flags(flag_values)
    training.enable_compilation_cache(flag_values.compilation_cache)
    architectures.check_arch(flag_values.arch, "arch")
    results = flag_values.results or os.path.join(
        flag_values.out_dir, "teachers.json"
    )
    cli.check_output_path(results, flag_values.overwrite, "results")
    data = data_loading.data_from_flags(flag_values)
    partition = (
        data_loading.parse_partition(flag_values.partition, data.num_classes)
        if flag_values.partition
        else None
    )
    paths = teacher_paths(flag_values.out_dir, partition)
    for path in paths:
        cli.check_output_path(path, flag_values.overwrite, "out_dir")
    keras.utils.set_random_seed(settings.seed)
    entries = train_teachers(data, flag_values.arch, partition, settings, paths)
    report = manifest(data, flag_values.arch, partition, settings, entries)
    cli.write_json(results, report)
    print_summary(entries)
    print(f"\nManifest: {results}")
    return report


main, run = cli.entry_points(define_flags, body)

if __name__ == "__main__":
    cli.launch(define_flags, main)
