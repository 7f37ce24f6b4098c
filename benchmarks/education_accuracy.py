"""Fashion-MNIST accuracy of education distillation against its baselines.

Trains, with the same student architecture, data and epoch budget:

    scratch        the student alone (cross-entropy)
    kd             Hinton KD from one full teacher
    ed_stratified  education distillation, three specialists, batches that
                   hold every seen group (the library's default)
    ed_interleaved education distillation, one group per batch, random order
    ed_sequential  education distillation, one group per batch, group by group
                   (the reference code's order)
    ed_init_head   ed_stratified, with the new classifier's rows of classes
                   already seen copied from the old one at each boundary
    aver           KD from two full teachers of different architectures
                   (`--teacher` and `--teacher2`), their softened
                   probabilities averaged (the Distiller's default loss)
    amtml          the same two full teachers with `loss=AMTML(hints=...)`:
                   instance-adaptive teacher weights, one hint per teacher
                   (student stage2_out <- teacher 0 stage2_out, student
                   stage3_out <- teacher 1 stage3_out; same resolutions) and
                   the RKD angle term (AMTML's defaults otherwise)
    ed_amtml       ed_stratified where each group is taught by its specialist
                   and both full teachers, mixed by AMTML (per-group adaptive
                   weights, a new weight layer per grade) with the same two
                   hints on the graded student's stages 2 and 3

An `ed*` method takes options after `+` signs, each a `GradeCallback` or
schedule setting of the issue "Education distillation that pays":

    +restart  keras_edu.schedules.PerGradeCosineDecay: the learning rate
              restarts its cosine at every grade (instead of one cosine
              over the whole run)
    +zero     GradeCallback(zero_init_residual=True): the residual blocks
              of a new stage start as their shortcut
    +head     GradeCallback(init_new_head_from_old=True)
    +carry    GradeCallback(optimizer_state="carry")
    +full     the full teacher also teaches, over every class seen so far,
              beside the specialists (Distiller(generalists_teach="seen"))
    +retire   with +full: the specialists stop teaching at the last grade,
              where the full teacher alone teaches every class
              (Distiller(specialists_until_grade=num_groups - 1))
    +replayW  GradeCallback(replay_weight=W), e.g. +replay2: the samples of
              groups seen at earlier grades weigh W times the new group's

e.g. `--methods ed_stratified+restart+zero`. `ed_faithful` is
`GradeCallback.faithful(...)` (the reference code's switch, sequential
batches). `--boundaries` are epochs or fractions of the run
(`0.625,0.75`, the reference's shape).

for each seed, and prints mean +- std of the test top-1 at the last and at
the best epoch, plus the per-group test top-1 at the end of each grade (so
forgetting shows). Teachers (one full, three specialists; ResNet-20 by
default; plus a second full teacher, WRN-16-1 by default, for aver, amtml
and ed_amtml) are trained once with seed 0 and cached, so every method and
seed learns from the same teachers. For the AMTML methods the mean learned
weight of each teacher (the training log's `teacher_{k}_weight`) is kept per
epoch in the JSON and printed under the table. Each run is also written as JSON under
`--out_dir` (a finished run is not run again), so an interrupted benchmark
resumes where it stopped.

Usage:

    KERAS_BACKEND=tensorflow python benchmarks/education_accuracy.py \
        --seeds 0,1,2 --epochs 6 --boundaries 2,4 --train_size 20000 \
        --methods scratch,kd,aver,amtml,ed_stratified,ed_amtml

The test split is always the full 10,000 images, evaluated in inference mode
after every epoch.
"""

import argparse
import json
import os
import platform
import statistics
import time

import keras
import numpy as np

import keras_edu

GROUPS = "1:1:1"  # 10 classes -> [0, 3), [3, 6), [6, 10)
METHODS = (
    "scratch", "kd", "ed_stratified", "ed_interleaved", "ed_sequential", "ed_init_head",
    "ed_faithful", "aver", "amtml", "ed_amtml",
)
ED_OPTIONS = ("restart", "zero", "head", "carry", "full", "retire")
# Methods that also learn from the second full teacher.
TWO_TEACHER_METHODS = ("aver", "amtml", "ed_amtml")
# AMTML hints: (student stage, full teacher, teacher layer). Teacher 0 is the
# `--teacher` full teacher, teacher 1 the `--teacher2` one; every zoo
# architecture names its stage ends `stage{k}_out`, at the same resolutions
# (28, 14, 7 on 28x28 inputs), so no pooling is needed.
HINTS = (("stage2_out", 0, "stage2_out"), ("stage3_out", 1, "stage3_out"))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--boundaries", default="2,4")
    parser.add_argument("--train_size", type=int, default=20000, help="0: all 60,000.")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--student_widths", default="",
                        help="Four ints (stem, stage 1-3): a ResNet of --student's "
                             "depth at these widths, e.g. 8,8,16,32.")
    parser.add_argument("--teacher", default="resnet20")
    parser.add_argument("--teacher2", default="wrn_16_1",
                        help="The second full teacher of aver, amtml, ed_amtml.")
    parser.add_argument("--teacher_epochs", type=int, default=6)
    parser.add_argument("--cache_teachers", action="store_true",
                        help="Distiller(cache_teachers=True): the teachers run once "
                             "over the training arrays (same outputs, so the same "
                             "accuracy; a cheaper step).")
    parser.add_argument("--out_dir", default="runs/education_accuracy")
    parser.add_argument("--chart", default="",
                        help="Write test top-1 against training cost (seed 0 of "
                             "each method) to this PNG.")
    args = parser.parse_args()
    args.methods = args.methods.split(",")
    for method in args.methods:
        base, *options = method.split("+")
        if base not in METHODS or (options and not base.startswith("ed")):
            parser.error(f"unknown --methods {method!r}; choose from {METHODS}")
        if {o for o in options if not _is_replay(o)} - set(ED_OPTIONS):
            parser.error(f"--methods {method!r}: options are {ED_OPTIONS} and replayW")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.boundaries = [
        float(b) if "." in b else int(b) for b in args.boundaries.split(",")
    ]
    args.student_widths = [int(w) for w in args.student_widths.split(",") if w]
    return args


def _is_replay(option):
    try:
        return option.startswith("replay") and float(option[len("replay"):]) > 0
    except ValueError:
        return False


def replay_weight(method):
    """W of a `+replayW` option of `method`, else 1.0."""
    options = [o for o in method.split("+")[1:] if _is_replay(o)]
    return float(options[0][len("replay"):]) if options else 1.0


def build_student(args):
    if not args.student_widths:
        return keras_edu.models.get(args.student, num_classes=10, input_shape=(28, 28, 1))
    depth = int(args.student.removeprefix("resnet"))
    return keras_edu.models.cifar_resnet(
        depth, args.student_widths, num_classes=10, input_shape=(28, 28, 1),
        name=f"resnet{depth}_{'_'.join(map(str, args.student_widths))}",
    )


def load_data(train_size):
    (x, y), (x_test, y_test) = keras_edu.data.load_fashion_mnist()
    if train_size:
        keep = np.random.default_rng(0).permutation(len(x))[:train_size]
        x, y = x[keep], y[keep]
    # Fashion-MNIST's mean and std of pixel values.
    scale = lambda images: ((images[..., None] / 255.0 - 0.286) / 0.353).astype("float32")
    return (scale(x), y.astype("int32")), (scale(x_test), y_test.astype("int32"))


def sgd(lr, steps_per_epoch, epochs, per_grade=False):
    if per_grade:
        # One cosine per grade; GradeCallback sizes it when fit starts.
        schedule = keras_edu.schedules.PerGradeCosineDecay(lr)
    else:
        # Cosine decay over the whole run: one schedule across grade boundaries.
        schedule = keras.optimizers.schedules.CosineDecay(lr, steps_per_epoch * epochs)
    return keras.optimizers.SGD(schedule, momentum=0.9)


def train_teachers(args, data):
    """The full teacher and the specialists, trained once and cached."""
    (x, y), (x_test, y_test) = data
    partition = keras_edu.ClassPartition.contiguous(10, GROUPS)
    cache = os.path.join(args.out_dir, "teachers")
    os.makedirs(cache, exist_ok=True)
    jobs = [("full", list(range(10)), args.teacher)] + [
        (f"group{k + 1}", group, args.teacher) for k, group in enumerate(partition.groups)
    ]
    if set(args.methods) & set(TWO_TEACHER_METHODS):
        jobs.append(("full2", list(range(10)), args.teacher2))
    teachers, scores = {}, {}
    for name, classes, arch in jobs:
        path = os.path.join(cache, f"{name}.keras")
        local = np.full(10, -1)
        local[classes] = np.arange(len(classes))
        keep, keep_test = np.isin(y, classes), np.isin(y_test, classes)
        if os.path.exists(path):
            model = keras.saving.load_model(path)
        else:
            keras.utils.set_random_seed(0)
            model = keras_edu.models.get(
                arch, num_classes=len(classes), input_shape=(28, 28, 1)
            )
            steps = -(-int(keep.sum()) // args.batch_size)
            model.compile(
                sgd(args.lr, steps, args.teacher_epochs),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"],
            )
            model.fit(x[keep], local[y[keep]], epochs=args.teacher_epochs,
                      batch_size=args.batch_size, verbose=2)
            model.save(path)
        predictions = np.argmax(model.predict(x_test[keep_test], verbose=0), -1)
        scores[name] = float(np.mean(predictions == local[y_test[keep_test]]))
        teachers[name] = keras_edu.Teacher(model, classes=classes)
    return teachers, scores


class PerGroupTop1(keras.callbacks.Callback):
    """Test top-1, overall and per class group, after every epoch.

    Uses the current grade's student: classes it cannot predict yet count
    as errors, so a group not yet seen scores 0.
    """

    def __init__(self, x, y, partition):
        super().__init__()
        self.x, self.y, self.partition = x, y, partition
        self.top1, self.per_group, self.grades, self.seconds = [], [], [], []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
        student = getattr(self.model, "student", self.model)
        grade = getattr(self.model, "grade", None)
        graded = getattr(self.model, "graded_student", None)
        columns = np.argmax(student.predict(self.x, batch_size=500, verbose=0), -1)
        if graded is not None:
            classes = np.asarray(self.partition.classes_up_to(grade))
            predictions = classes[columns]
        else:
            predictions = columns
        correct = predictions == self.y
        self.top1.append(float(correct.mean()))
        self.per_group.append(
            [float(correct[np.isin(self.y, g)].mean()) for g in self.partition.groups]
        )
        self.grades.append(grade or 0)


def grade_callback(method, args, seed):
    base, *options = method.split("+")
    if base == "ed_faithful":
        return keras_edu.GradeCallback.faithful(args.boundaries, seed=seed)
    order = "stratified" if base in ("ed_init_head", "ed_amtml") else base.split("_")[1]
    return keras_edu.GradeCallback(
        boundaries=args.boundaries,
        order=order,
        init_new_head_from_old=base == "ed_init_head" or "head" in options,
        zero_init_residual="zero" in options,
        optimizer_state="carry" if "carry" in options else "reset",
        replay_weight=replay_weight(method),
        seed=seed,
    )


def run(method, seed, args, data, teachers):
    (x, y), (x_test, y_test) = data
    partition = keras_edu.ClassPartition.contiguous(10, GROUPS)
    keras.utils.set_random_seed(seed)
    student = build_student(args)
    steps = -(-len(x) // args.batch_size)
    callbacks = []
    if method == "scratch":
        model = student
        model.compile(
            sgd(args.lr, steps, args.epochs),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    elif method == "kd":
        model = keras_edu.Distiller(student, [teachers["full"]], cache_teachers=args.cache_teachers)
        model.compile(sgd(args.lr, steps, args.epochs))
    elif method == "aver":
        model = keras_edu.Distiller(student, [teachers["full"], teachers["full2"]], cache_teachers=args.cache_teachers)
        model.compile(sgd(args.lr, steps, args.epochs))
    elif method == "amtml":
        model = keras_edu.Distiller(
            student, [teachers["full"], teachers["full2"]],
            loss=keras_edu.losses.AMTML(hints=HINTS), cache_teachers=args.cache_teachers,
        )
        model.compile(sgd(args.lr, steps, args.epochs))
    else:
        stage_ends = keras_edu.models.stage_ends(args.student)
        graded = keras_edu.GradedStudent.from_model(student, stage_ends, partition)
        specialists = [teachers[f"group{k + 1}"] for k in range(partition.num_groups)]
        if method == "ed_amtml":
            # Teachers 0..K-1 are the specialists, K and K+1 the two full
            # teachers: group j is taught by specialist j and both.
            full = partition.num_groups
            stage_names = [stage.name for stage in graded.stages]
            hints = [
                (stage_names[stage_ends.index(student_layer)], full + k, teacher_layer)
                for student_layer, k, teacher_layer in HINTS
            ]
            model = keras_edu.Distiller(
                graded, specialists + [teachers["full"], teachers["full2"]],
                loss=keras_edu.losses.AMTML(hints=hints), cache_teachers=args.cache_teachers,
            )
        elif "+full" in method:
            model = keras_edu.Distiller(
                graded, specialists + [teachers["full"]], generalists_teach="seen",
                specialists_until_grade=(
                    partition.num_groups - 1 if "+retire" in method else None
                ),
                cache_teachers=args.cache_teachers,
            )
        else:
            model = keras_edu.Distiller(graded, specialists, cache_teachers=args.cache_teachers)
        model.compile(sgd(args.lr, steps, args.epochs, per_grade="+restart" in method))
        callbacks.append(grade_callback(method, args, seed))
    probe = PerGroupTop1(x_test, y_test, partition)
    cost = keras_edu.cost.TrainingCost(batch_size=args.batch_size)
    history = model.fit(x, y, epochs=args.epochs, batch_size=args.batch_size, verbose=2,
                        callbacks=callbacks + [probe, cost])
    epoch_boundaries = boundary_epochs(args)
    at_boundaries = {
        str(epoch): probe.per_group[epoch - 1] for epoch in epoch_boundaries
    }
    extra = {}
    if method in TWO_TEACHER_METHODS:
        names = [f"full ({args.teacher})", f"full2 ({args.teacher2})"]
        if method == "ed_amtml":
            names = [f"group{k + 1}" for k in range(partition.num_groups)] + names
        extra["teachers"] = names
    if "amtml" in method:
        # Mean a_k(x) over the rows teacher k teaches, per epoch, and the
        # loss parts, from the training log.
        extra["hints"] = [list(h) for h in model.distillation_term.hints]
        extra["teacher_weights_by_epoch"] = [
            [float(history.history[f"teacher_{k}_weight"][e])
             for k in range(len(model.teachers))]
            for e in range(args.epochs)
        ]
        extra["amtml_losses_by_epoch"] = {
            key: [float(v) for v in history.history[key]]
            for key in ("kd_loss", "hint_loss", "angle_loss", "l2_loss")
            if key in history.history
        }
    return {
        "method": method,
        "seed": seed,
        "backend": keras.backend.backend(),
        "cache_teachers": args.cache_teachers,
        "keras_version": keras.__version__,
        "epochs": args.epochs,
        "boundaries": epoch_boundaries if method.startswith("ed") else [],
        "train_size": len(x),
        "top1_last": probe.top1[-1],
        "top1_best": max(probe.top1),
        "top1_by_epoch": probe.top1,
        "per_group_top1": probe.per_group[-1],
        "per_group_top1_by_epoch": probe.per_group,
        "per_group_top1_before_boundary": at_boundaries,
        "epoch_seconds": probe.seconds,
        # Cumulative training FLOPs after each epoch (keras_edu.cost).
        "train_cost_by_epoch": [float(c) for c in history.history["train_cost"]],
        **extra,
    }


def boundary_epochs(args):
    """`--boundaries` as epochs (fractions resolved as GradeCallback does)."""
    return keras_edu.GradeCallback(args.boundaries).boundaries_for(args.epochs)


def mean_std(values):
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} +- {100 * statistics.stdev(values):.2f}"


def print_table(results, args, teacher_scores):
    second = (f" (+ {args.teacher2} second full teacher)"
              if set(args.methods) & set(TWO_TEACHER_METHODS) else "")
    print(f"\nFashion-MNIST, {args.student} student, {args.teacher} teachers{second}, "
          f"{results[0]['train_size'] if results else '?'} training images, "
          f"{args.epochs} epochs (ED boundaries {args.boundaries}), "
          f"backend {keras.backend.backend()}, keras {keras.__version__}, "
          f"{platform.processor() or platform.machine()}")
    print("Teachers' test top-1:", {k: round(100 * v, 2) for k, v in teacher_scores.items()})
    print()
    groups = "groups 1/2/3 at " + ", ".join(f"epoch {b}" for b in boundary_epochs(args)) + ", end"
    print(f"| method | seeds | top-1 last | top-1 best | {groups} | s/epoch |")
    print("|---|---|---|---|---|---|")
    for method in args.methods:
        rows = [r for r in results if r["method"] == method]
        if not rows:
            continue
        snapshots = [
            [statistics.mean(r["per_group_top1_before_boundary"][str(b)][k] for r in rows)
             for k in range(3)]
            for b in boundary_epochs(args)
        ] + [[statistics.mean(r["per_group_top1"][k] for r in rows) for k in range(3)]]
        cell = "; ".join("/".join(f"{100 * v:.1f}" for v in s) for s in snapshots)
        seconds = statistics.mean(statistics.mean(r["epoch_seconds"]) for r in rows)
        print(f"| {method} | {len(rows)} | {mean_std([r['top1_last'] for r in rows])} "
              f"| {mean_std([r['top1_best'] for r in rows])} | {cell} | {seconds:.1f} |")
    for method in args.methods:
        rows = [r for r in results if r["method"] == method and "teacher_weights_by_epoch" in r]
        if not rows:
            continue
        # Mean over seeds of each teacher's mean weight on the rows it
        # teaches, in the last epoch (uniform would be 1/2 for two teachers,
        # 1/3 for a specialist and two full teachers).
        last = [statistics.mean(r["teacher_weights_by_epoch"][-1][k] for r in rows)
                for k in range(len(rows[0]["teachers"]))]
        print(f"{method}: mean AMTML teacher weights, last epoch: "
              + ", ".join(f"{n} {w:.3f}" for n, w in zip(rows[0]["teachers"], last)))


def main():
    args = parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    data = load_data(args.train_size)
    teachers, teacher_scores = train_teachers(args, data)
    results = []
    for seed in args.seeds:
        for method in args.methods:
            path = os.path.join(args.out_dir, f"{method}_seed{seed}.json")
            if os.path.exists(path):
                with open(path) as f:
                    results.append(json.load(f))
                continue
            result = run(method, seed, args, data, teachers)
            with open(path, "w") as f:
                json.dump(result, f, indent=1)
            results.append(result)
            print_table(results, args, teacher_scores)
    print_table(results, args, teacher_scores)
    if args.chart:
        draw_cost_chart(results, args.chart)


def draw_cost_chart(results, path):
    """Top-1 against cumulative training cost, the lowest seed of each method."""
    runs = {}
    for result in sorted(results, key=lambda r: r["seed"]):
        if "train_cost_by_epoch" in result and result["method"] not in runs:
            runs[result["method"]] = {
                "train_cost": result["train_cost_by_epoch"],
                "top1": result["top1_by_epoch"],
                "boundaries": result["boundaries"],
            }
    if runs:
        keras_edu.visualize.cost_chart(runs, path=path)
        print(f"Chart: {path}")


if __name__ == "__main__":
    main()
