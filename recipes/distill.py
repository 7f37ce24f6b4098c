r"""Trains a student with one distillation method and records how it did.

Methods (`--method`):

- `scratch`: the student alone, cross-entropy on the labels.
- `kd`: Hinton KD from one full teacher (`keras_edu.Distiller`).
- `aver`: KD from several full teachers whose probabilities are averaged
  (the Distiller's default for teachers over the same classes).
- `amtml`: adaptive multi-teacher multi-level KD (`keras_edu.losses.AMTML`).
- `ed`: education distillation: the student (a `keras_edu.models`
  architecture split at its stages by `keras_edu.GradedStudent`) grows one
  stage per grade inside one `fit()`, driven by `keras_edu.GradeCallback`,
  each group of classes taught by its specialist
  (`keras_edu.Teacher(model, classes=group)`).
- `ed_amtml`: education distillation with the AMTML term in each grade.

The student is scored in inference mode on the real test split after every
epoch. The results JSON holds the last and best top-1, the per-group top-1
at the end, at each grade boundary and after every epoch, the epoch times,
and the path of the saved student (`.keras`, a plain Keras model).

Usage:

    python recipes/distill.py --method=kd --teachers=runs/t/teacher_full.keras \
        --student=cnn16 --results=runs/kd.json
    python recipes/distill.py --method=ed --teachers=runs/s/teachers.json \
        --student=cnn16 --boundaries=2,4 --epochs=6 --results=runs/ed.json
    python recipes/distill.py --method=ed --teachers=runs/s/teachers.json \
        --student=cnn16 --boundaries=0.125,0.25 --epochs=24 \
        --results=runs/ed24.json
    python recipes/distill.py --config=cifar100_resnet110_resnet20 --method=ed \
        --teachers=runs/c100_specialists/teachers.json --results=runs/c100_ed.json
"""

import dataclasses
import importlib.util
import json
import os

from absl import flags
import keras
import numpy as np

import architectures
import cli
import configs
import data_loading
import keras_edu
from keras_edu.curriculum import DEFAULT_ORDER
from keras_edu.curriculum import ORDERS
import training

METHODS = ("scratch", "kd", "aver", "amtml", "ed", "ed_amtml")
GRADED_METHODS = ("ed", "ed_amtml")
AMTML_METHODS = ("amtml", "ed_amtml")


def define_flags(flag_values):
    data_loading.define_data_flags(flag_values)
    training.define_training_flags(flag_values, configs.names())
    flags.DEFINE_enum(
        "method",
        None,
        METHODS,
        "Distillation method: scratch (no teacher), kd (one full teacher), "
        "aver (several full teachers, probabilities averaged), amtml, ed "
        "(education distillation from specialists), ed_amtml.",
        flag_values=flag_values,
    )
    flags.mark_flag_as_required("method", flag_values=flag_values)
    flags.DEFINE_string(
        "student",
        "resnet8",
        "Student architecture: a keras_edu.models name (resnet8, resnet20, "
        "wrn_16_2, ...) or `cnn<W>`, the recipes' 3-conv CNN (e.g. cnn16).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "teachers",
        "",
        "Teacher `.keras` files, comma-separated; or the JSON manifest "
        "written by train_teacher.py. For ed/ed_amtml the k-th file teaches "
        "group k of --partition; separate groups with `;` to give a group "
        "several teachers (`a.keras,b.keras;c.keras;d.keras`). A teacher "
        "with as many logits as the data set has classes is a full teacher.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "partition",
        "1:1:1",
        "Class groups: ratios (`1:1:1`, contiguous ranges) or explicit "
        "groups (`0,1,2;3,4,5;6,7,8,9`). The grades of ed/ed_amtml; the "
        "groups of the per-group top-1 for every method.",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "boundaries",
        ["2", "4"],
        "When grades 2, 3, ... start (ed/ed_amtml: one per group after the "
        "first): integer epochs, each < --epochs (`2,4`), or fractions of "
        "the run in (0, 1) (`0.125,0.25`: epoch floor(f * epochs + 0.5), "
        "as keras_edu.GradeCallback resolves them). Other methods record "
        "their per-group top-1 there too.",
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "lr_schedule",
        None,
        training.LR_SCHEDULES,
        "per_grade: a keras_edu.schedules.PerGradeCosineDecay from --lr, one "
        "cosine per grade (the default for ed/ed_amtml; needs no "
        "--lr_decay_epochs). step: --lr, times --lr_decay_factor at each of "
        "--lr_decay_epochs (the default, and the only choice, for the other "
        "methods).",
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "distribution",
        "none",
        training.DISTRIBUTIONS,
        "data_parallel: train on every local device, the batch split "
        "across them (JAX: keras.distribution.DataParallel; TensorFlow: "
        "tf.distribute.MirroredStrategy, not for ed/ed_amtml on several "
        "devices; PyTorch: refused). none: Keras' default device.",
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "mixed_precision",
        "float32",
        training.PRECISIONS,
        "Keras dtype policy of the student (set before it is built): "
        "float32, mixed_float16 (loss scaling added by compile) or "
        "mixed_bfloat16. Loaded teachers keep their saved policy.",
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "alpha",
        0.3,
        "Weight of the cross-entropy; 1 - alpha weighs the distillation term.",
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "temperature",
        4.0,
        "Softmax temperature of the distillation term.",
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "order",
        DEFAULT_ORDER,
        ORDERS,
        "ed/ed_amtml: batch layout of the curriculum (see "
        "keras_edu.CurriculumDataset).",
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "generalists_teach",
        "seen",
        ["seen", "group"],
        "ed: what a full teacher among --teachers teaches beside the "
        "specialists: every class seen at the current grade (seen, the "
        "measured best: docs/results.md) or each example's group only.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "retire_specialists",
        True,
        "ed with a full teacher and --generalists_teach=seen: the "
        "specialists stop teaching at the last grade, where the full "
        "teacher covers every class (as good, one teacher pass cheaper).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "results",
        "runs/distill.json",
        "Path of the results JSON.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "student_out",
        None,
        "Path of the trained student `.keras` (default: --results with "
        "`.keras` in place of `.json`).",
        flag_values=flag_values,
    )


@dataclasses.dataclass
class DistillOptions:
    """What to distil: the method, the student, the teachers and the terms.

    Attributes:
        method: One of `METHODS`.
        student: The student's architecture name (see
            `architectures.build_model`).
        partition: The `keras_edu.ClassPartition`: the grades of
            `ed`/`ed_amtml`, and the groups of the per-group scores.
        teachers: `load_teachers`' output (empty for `scratch`).
        alpha: Weight of the cross-entropy.
        temperature: Softmax temperature of the distillation term.
        boundaries: Epochs at which grades 2, 3, ... start (see
            `check_boundaries`).
        boundaries_flag: `--boundaries` as given (epochs or fractions of
            the run), for the results; None: as `boundaries`.
        lr_schedule: `"step"` or `"per_grade"` (`training.make_optimizer`);
            `"per_grade"` needs a graded method.
        order: The curriculum's batch layout (`ed`/`ed_amtml`).
        generalists_teach: `ed`: what a full teacher among `teachers`
            teaches (`keras_edu.Distiller`'s argument): "seen" (every class
            seen at the grade, on every example) or "group".
        retire_specialists: `ed` with a full teacher teaching "seen": the
            specialists stop after the last-but-one grade, so the last
            grade runs one teacher (`specialists_until_grade`).
    """

    method: str
    student: str
    partition: object
    teachers: list = dataclasses.field(default_factory=list)
    alpha: float = 0.3
    temperature: float = 4.0
    boundaries: tuple = ()
    boundaries_flag: tuple = None
    lr_schedule: str = "step"
    order: str = DEFAULT_ORDER
    generalists_teach: str = "seen"
    retire_specialists: bool = True

    def __post_init__(self):
        check_method(self.method)
        check_terms(self.alpha, self.temperature)
        check_lr_schedule(self.lr_schedule, self.method)


def check_terms(alpha, temperature):
    """Refuses an `alpha` outside [0, 1] or a temperature <= 0."""
    if not 0 <= alpha <= 1:
        raise cli.RecipeError(
            f"--alpha must be in [0, 1]. Received: {alpha}."
        )
    if not temperature > 0:
        raise cli.RecipeError(
            f"--temperature must be > 0. Received: {temperature}."
        )


def default_lr_schedule(method):
    """`--lr_schedule` when not given: a cosine per grade for graded methods."""
    return "per_grade" if method in GRADED_METHODS else "step"


def check_lr_schedule(lr_schedule, method, lr_decay_epochs=()):
    """Refuses `per_grade` without grades, or beside `--lr_decay_epochs`."""
    if lr_schedule != "per_grade":
        return
    if method not in GRADED_METHODS:
        raise cli.RecipeError(
            f"--lr_schedule=per_grade restarts the learning rate at every "
            f"grade, but --method={method} has no grades. Pass "
            "--lr_schedule=step (the default for it), or use --method=ed."
        )
    if lr_decay_epochs:
        decays = ",".join(map(str, lr_decay_epochs))
        raise cli.RecipeError(
            f"--lr_decay_epochs={decays} decays the step schedule, but "
            "--lr_schedule=per_grade (the default for ed/ed_amtml) decays "
            "with a cosine in every grade. Pass --lr_schedule=step to keep "
            "the decays, or --lr_decay_epochs= (empty) for the per-grade "
            "cosine."
        )


def check_method(method):
    """Refuses an unknown `--method` before any work."""
    if method not in METHODS:
        raise cli.RecipeError(
            f"Unknown --method={method}. Valid methods: {', '.join(METHODS)}."
        )


# ------------------------------------------------------------- teachers


def parse_teacher_spec(spec, graded, num_groups):
    """`--teachers` -> `[(path, group index or None, classes or None)]`.

    `classes` comes from a train_teacher.py manifest; the group index from
    the file's position when `graded` (the k-th file, or the k-th
    `;`-separated list, teaches group k).
    """
    spec = (spec or "").strip()
    if not spec:
        return []
    if spec.endswith(".json"):
        return _read_manifest(spec)
    if ";" in spec:
        parts = [
            [p.strip() for p in part.split(",") if p.strip()]
            for part in spec.split(";")
        ]
        if graded and len(parts) != num_groups:
            raise cli.RecipeError(
                f"--teachers lists {len(parts)} `;`-separated groups but "
                f"--partition has {num_groups}. Give the teachers of each "
                "group, in group order."
            )
        return [
            (path, index if graded else None, None)
            for index, paths in enumerate(parts)
            for path in paths
        ]
    paths = [p.strip() for p in spec.split(",") if p.strip()]
    by_position = graded and len(paths) == num_groups
    return [(p, i if by_position else None, None) for i, p in enumerate(paths)]


def _read_manifest(path):
    if not os.path.isfile(path):
        raise cli.RecipeError(f"--teachers={path}: no such manifest file.")
    try:
        with open(path) as f:
            entries = json.load(f)["teachers"]
        base = os.path.dirname(os.path.abspath(path))
        return [
            (
                os.path.join(base, e["path"]),
                None,
                [int(c) for c in e["classes"]],
            )
            for e in entries
        ]
    except (ValueError, KeyError, TypeError):
        raise cli.RecipeError(
            f"--teachers={path} is not a manifest written by train_teacher.py "
            "(a JSON object with a `teachers` list of {path, classes})."
        ) from None


def load_teachers(spec, data, method, partition):
    """Loads `--teachers` and decides which classes each one covers.

    Returns:
        A list of `(keras_edu.Teacher, info)` where `info` is a dict with
        the file's `path` and `classes`.
    """
    graded = method in GRADED_METHODS
    specs = parse_teacher_spec(spec, graded, partition.num_groups)
    if method == "scratch":
        if specs:
            print(
                "Note: --method=scratch trains without teachers; "
                "--teachers is ignored."
            )
        return []
    if not specs:
        raise cli.RecipeError(
            f"--method={method} needs --teachers: `.keras` files or a "
            "manifest from train_teacher.py."
        )
    teachers = []
    for path, group_index, classes in specs:
        model = _load_model(path)
        architectures.check_input_shape(model, data, f"Teacher {path}")
        width = model.outputs[0].shape[-1]
        if classes is None:
            classes = _classes_for(
                path, width, data.num_classes, partition, group_index, method
            )
        elif len(classes) != width:
            raise cli.RecipeError(
                f"Teacher {path} has {width} logits but its manifest entry "
                f"lists {len(classes)} classes. Retrain it or fix the "
                "manifest."
            )
        _check_teacher_classes(path, classes, data, method, partition)
        teacher = keras_edu.Teacher(model, classes=classes)
        teachers.append(
            (teacher, {"path": os.path.abspath(path), "classes": list(classes)})
        )
    _check_teacher_count(method, teachers)
    return teachers


def _load_model(path):
    """Loads one `--teachers` file, saying so when it does not exist."""
    if not os.path.isfile(path):
        raise cli.RecipeError(f"--teachers: no such file {path}.")
    return architectures.load_model(path, "teachers")


def _classes_for(path, width, num_classes, partition, group_index, method):
    """The classes a teacher file covers, from its width and position."""
    if width == num_classes:
        return list(range(num_classes))
    if group_index is None:
        if method in GRADED_METHODS:
            fix = (
                f"List one teacher per group of --partition ({partition.num_groups}), "
                "in group order, separate the groups' teachers with `;`, or "
                "pass the manifest of train_teacher.py."
            )
        else:
            fix = (
                f"--method={method} needs full teachers. For specialists of "
                "class groups use --method=ed, or retrain the teacher on "
                "every class (train_teacher.py without --partition)."
            )
        raise cli.RecipeError(
            f"Teacher {path} has {width} logits but the data set has "
            f"{num_classes} classes. {fix}"
        )
    group = partition.groups[group_index]
    if width != len(group):
        raise cli.RecipeError(
            f"Teacher {path} has {width} logits, but it teaches group "
            f"{group_index + 1} of --partition, which has {len(group)} "
            f"classes ({group}). List the teachers in group order, pass the "
            "--partition the specialists were trained with, or retrain the "
            "teacher with train_teacher.py --partition=..."
        )
    return list(group)


def _check_teacher_classes(path, classes, data, method, partition):
    full = sorted(classes) == list(range(data.num_classes))
    if max(classes) >= data.num_classes:
        raise cli.RecipeError(
            f"Teacher {path} covers class ids up to {max(classes)} but "
            f"--dataset={data.name} has {data.num_classes} classes."
        )
    if method in GRADED_METHODS:
        if not full and sorted(classes) not in [
            sorted(g) for g in partition.groups
        ]:
            raise cli.RecipeError(
                f"Teacher {path} covers classes {sorted(classes)}, which are "
                f"not one group of --partition ({partition.groups}). Pass the "
                "partition the specialists were trained with."
            )
    elif not full:
        raise cli.RecipeError(
            f"Teacher {path} is a specialist of {len(classes)} classes; "
            f"--method={method} needs full teachers ({data.num_classes} "
            "logits). Use --method=ed for specialists."
        )


def _check_teacher_count(method, teachers):
    if method == "kd" and len(teachers) != 1:
        raise cli.RecipeError(
            f"--method=kd distils one teacher but --teachers lists "
            f"{len(teachers)}. Use --method=aver (or amtml) for several."
        )
    if method in ("aver", "amtml") and len(teachers) < 2:
        raise cli.RecipeError(
            f"--method={method} combines several full teachers but "
            f"--teachers lists {len(teachers)}. Give two or more, or use "
            "--method=kd."
        )


# ---------------------------------------------------------------- train


def resolve_boundaries(boundaries, epochs):
    """`--boundaries` (epochs, or fractions of the run) -> epochs of this run.

    `keras_edu.GradeCallback` checks and resolves them, as it would in
    `fit` (a fraction `f` starts its grade at epoch `floor(f * epochs +
    0.5)`), so the recipe accepts exactly what the library does; its
    refusal becomes an error naming the flag.
    """
    values = list(boundaries)
    try:
        return keras_edu.GradeCallback(boundaries=values).boundaries_for(epochs)
    except ValueError as error:
        given = ",".join(map(str, values))
        fix = ""
        if len({type(v) for v in values}) > 1:
            fix = (
                " Give every value as an epoch (`--boundaries=2,4`) or every "
                "value as a fraction of --epochs (`--boundaries=0.34,0.67`)."
            )
        raise cli.RecipeError(f"--boundaries={given}: {error}{fix}") from None


def check_boundaries(boundaries, method, partition, epochs):
    """Validates `--boundaries` and returns their epochs in this run.

    Args:
        boundaries: Integer epochs, or fractions of the run in (0, 1)
            (`cli.number_list` of the flag).
        method: The `--method`.
        partition: The `keras_edu.ClassPartition`.
        epochs: The run's epochs.

    Returns:
        The epochs at which grades 2, 3, ... start; non-graded methods keep
        those < epochs (where they record their per-group scores).
    """
    values = resolve_boundaries(boundaries, epochs)
    if method not in GRADED_METHODS:
        return tuple(b for b in values if b < epochs)
    needed = partition.num_groups - 1
    if len(values) != needed:
        raise cli.RecipeError(
            f"--method={method} with {partition.num_groups} groups in "
            f"--partition needs {needed} --boundaries (the epochs at which "
            f"grades 2..{partition.num_groups} start). Received: {values}."
        )
    if values and values[-1] >= epochs:
        raise cli.RecipeError(
            f"--boundaries must be < --epochs={epochs}, or the last grades "
            f"never train. Received: {values}."
        )
    return tuple(values)


def graded_student(model, partition, arch):
    """Splits a model at its `stage{k}_out` layers into one stage per group."""
    stages = keras_edu.models.stage_ends(model)
    if len(stages) != partition.num_groups:
        raise cli.RecipeError(
            f"--student={arch} has {len(stages)} stages, but --partition has "
            f"{partition.num_groups} groups; education distillation adds one "
            f"stage per grade. Use a {len(stages)}-group partition, e.g. "
            f"--partition={':'.join(['1'] * len(stages))}."
        )
    return keras_edu.GradedStudent.from_model(
        model, split_at=stages, partition=partition
    )


def distill(data, options, settings, student_path):
    """Trains a student, saves it, and returns its results.

    Args:
        data: A `data_loading.Data`.
        options: A `DistillOptions`.
        settings: A `training.TrainSettings`.
        student_path: Where to save the trained student (`.keras`).

    Returns:
        The results dict (see docs/recipes.md for the fields).
    """
    method, partition = options.method, options.partition
    print(f"\n== {method}: {options.student} student on {data.name}")
    keras.utils.set_random_seed(settings.seed)
    target = architectures.build_model(
        options.student,
        data.num_classes,
        data.image_shape,
        settings.weight_decay,
        "student",
    )
    evaluator = training.TestEvaluator(
        data.test_x, data.test_y, partition.groups
    )
    rates = training.LearningRateLog()
    optimizer = None
    if method == "scratch":
        training.fit_plain(
            target, data, settings, callbacks=[evaluator, rates]
        )
        student = target
    else:
        graded = method in GRADED_METHODS
        distiller = keras_edu.Distiller(
            graded_student(target, partition, options.student)
            if graded
            else target,
            [teacher for teacher, _ in options.teachers],
            alpha=options.alpha,
            temperature=options.temperature,
            loss=keras_edu.losses.AMTML() if method in AMTML_METHODS else None,
            **education_routing(options),
        )
        optimizer = training.make_optimizer(settings, options.lr_schedule)
        distiller.compile(optimizer=optimizer, metrics=["accuracy"])
        guard = training.nan_guard(data, settings)
        callbacks = [evaluator, guard, *training.schedule_callbacks(settings)]
        if graded:
            callbacks.append(
                keras_edu.GradeCallback(
                    boundaries=list(options.boundaries),
                    order=options.order,
                    seed=settings.seed,
                )
            )
            inputs = data_loading.unbatched_inputs(data, settings)
        else:
            inputs = data_loading.fit_inputs(data, settings)
        # Last: it reads the rate the callbacks above have set.
        callbacks.append(rates)
        distiller.fit(
            epochs=settings.epochs,
            verbose=settings.verbose,
            callbacks=callbacks,
            **inputs,
        )
        training.raise_if_stopped_on_nan(guard)
        student = distiller.graduate()
    student.save(student_path)
    results = results_dict(
        data, options, settings, evaluator, student, student_path
    )
    results["lr_by_epoch"] = rates.rates
    results["lr_grade_steps"] = _grade_steps(optimizer)
    results["charts"] = save_charts(
        results, distiller if method == "amtml" else None, data, student_path
    )
    return results


def _grade_steps(optimizer):
    """The steps per grade GradeCallback gave a per-grade schedule, or None."""
    schedule = keras_edu.schedules.per_grade_schedule(optimizer)
    return None if schedule is None else list(schedule.grade_steps)


def education_routing(options):
    """The Distiller's `generalists_teach` and `specialists_until_grade`.

    Only `ed` routes a full teacher over the seen classes (AMTML mixes each
    group's teachers itself), and only when one of the teachers is full.
    """
    every_class = set(range(options.partition.num_classes))
    full = any(set(t.classes) == every_class for t, _ in options.teachers)
    if options.method != "ed" or not full:
        return {}
    routing = {"generalists_teach": options.generalists_teach}
    groups = options.partition.num_groups
    if options.generalists_teach == "seen" and options.retire_specialists and groups > 1:
        routing["specialists_until_grade"] = groups - 1
    return routing


def save_charts(results, amtml_distiller, data, student_path):
    """The run's PNGs next to its student file; returns their paths.

    Every run gets the per-group test top-1 over the epochs (the curriculum
    chart, grades shaded for ed/ed_amtml); an `amtml` run also gets the
    learned teacher weights per class on the test split. Needs matplotlib;
    without it the run says so and saves no chart.
    """
    from keras_edu import visualize

    if importlib.util.find_spec("matplotlib") is None:
        print("No charts: `pip install matplotlib` to save them.")
        return {}
    prefix = os.path.splitext(student_path)[0]
    charts = {"curriculum": prefix + "_curriculum.png"}
    visualize.curriculum_chart(
        results,
        boundaries=results["boundaries"] if results["grade_by_epoch"] else [],
        path=charts["curriculum"],
    )
    if amtml_distiller is not None:
        charts["teacher_weights"] = prefix + "_teacher_weights.png"
        visualize.teacher_weight_chart(
            amtml_distiller.teacher_weights(data.test_x),
            data.test_y,
            teacher_names=[
                os.path.basename(info["path"]) for info in results["teachers"]
            ],
            path=charts["teacher_weights"],
        )
    return {name: os.path.abspath(path) for name, path in charts.items()}


def results_dict(data, options, settings, evaluator, student, path):
    """The results JSON of a `distill` run (fields: docs/recipes.md)."""
    by_epoch = evaluator.per_group
    best = int(np.argmax(evaluator.top1))
    method = options.method
    graded = method in GRADED_METHODS
    return {
        "recipe": "distill",
        "method": method,
        "dataset": data.name,
        **cli.run_facts(settings.seed),
        "epochs": settings.epochs,
        "student": options.student,
        "teachers": [info for _, info in options.teachers],
        # How a full teacher teaches in a curriculum (empty: no such teacher).
        "education_routing": education_routing(options),
        "partition": options.partition.groups,
        "boundaries": list(options.boundaries),
        # `--boundaries` as given: epochs, or fractions of the run.
        "boundaries_flag": list(
            options.boundaries
            if options.boundaries_flag is None
            else options.boundaries_flag
        ),
        "lr_schedule": options.lr_schedule,
        "order": options.order if graded else None,
        "alpha": options.alpha if method != "scratch" else None,
        "temperature": options.temperature if method != "scratch" else None,
        "settings": settings.as_dict(),
        "preprocessing": data.preprocessing(),
        "train_examples": _train_size(data),
        "test_examples": len(data.test_y),
        "examples_per_class": data.examples_per_class,
        "top1_last": evaluator.top1[-1],
        "top1_best": evaluator.top1[best],
        "best_epoch": best + 1,
        "top1_by_epoch": evaluator.top1,
        "loss_by_epoch": evaluator.losses,
        "per_group_top1": by_epoch[-1],
        "per_group_top1_at_boundaries": [
            {"epoch": b, "per_group_top1": by_epoch[b - 1]}
            for b in options.boundaries
        ],
        "per_group_top1_by_epoch": by_epoch,
        "grade_by_epoch": evaluator.grades if graded else None,
        "epoch_seconds": evaluator.seconds,
        "train_seconds": round(float(sum(evaluator.seconds)), 3),
        "student_params": int(student.count_params()),
        "student_path": os.path.abspath(path),
    }


def _train_size(data):
    if data.train_arrays is not None:
        return len(data.train_arrays[1])
    return data.train.size


def print_summary(results, file=None):
    """The comparison table of one or more `distill` results."""
    cli.print_table(
        results,
        [
            ("method", "method", "s"),
            ("student", "student", "s"),
            ("top-1 last", "top1_last", ".4f"),
            ("top-1 best", "top1_best", ".4f"),
            (
                "per-group top-1",
                lambda r: cli.format_groups(r["per_group_top1"]),
                "s",
            ),
            ("s/epoch", lambda r: float(np.mean(r["epoch_seconds"])), ".1f"),
            ("params", "student_params", ",d"),
        ],
        title=f"Students on {results[0]['dataset']} (test split, "
        f"{results[0]['test_examples']} images, {results[0]['backend']})",
        file=file,
    )


def body(flag_values):
    cli.resolve_flags(flag_values, configs, {})
    method = flag_values.method
    check_method(method)
    check_terms(flag_values.alpha, flag_values.temperature)
    settings = training.settings_from_flags(flag_values)
    lr_schedule = flag_values.lr_schedule or default_lr_schedule(method)
    check_lr_schedule(lr_schedule, method, settings.lr_decay_epochs)
    training.check_distribution(flag_values.distribution)
    training.enable_compilation_cache(flag_values.compilation_cache)
    boundaries = cli.number_list(flag_values.boundaries, "boundaries")
    # Refuse bad boundaries (mixed epochs and fractions, ...) before the
    # data is loaded; check_boundaries checks them against the partition.
    resolve_boundaries(boundaries, settings.epochs)
    architectures.check_arch(flag_values.student, "student")
    results = flag_values.results
    student_out = (
        flag_values.student_out or os.path.splitext(results)[0] + ".keras"
    )
    cli.check_output_path(results, flag_values.overwrite, "results")
    cli.check_output_path(student_out, flag_values.overwrite, "student_out")
    data = data_loading.data_from_flags(flag_values)
    partition = data_loading.parse_partition(
        flag_values.partition, data.num_classes
    )
    options = DistillOptions(
        method=method,
        student=flag_values.student,
        partition=partition,
        alpha=flag_values.alpha,
        temperature=flag_values.temperature,
        boundaries=check_boundaries(
            boundaries, method, partition, settings.epochs
        ),
        boundaries_flag=tuple(boundaries),
        lr_schedule=lr_schedule,
        order=flag_values.order,
        generalists_teach=flag_values.generalists_teach,
        retire_specialists=flag_values.retire_specialists,
    )
    # The teachers too are built inside: they must live on the same
    # devices as the student (the policy leaves their saved dtypes alone).
    with training.distribution_scope(
        flag_values.distribution, graded=method in GRADED_METHODS
    ) as devices, training.precision_policy(flag_values.mixed_precision):
        options.teachers = load_teachers(
            flag_values.teachers, data, method, partition
        )
        result = distill(data, options, settings, student_out)
    result["quick"] = bool(flag_values.quick)
    result["config"] = flag_values.config
    result["distribution"] = flag_values.distribution
    result["devices"] = devices
    result["mixed_precision"] = flag_values.mixed_precision
    cli.write_json(results, result)
    print_summary([result])
    print(f"\nResults: {results}\nStudent: {student_out}")
    return result


main, run = cli.entry_points(define_flags, body)

if __name__ == "__main__":
    cli.launch(define_flags, main)
