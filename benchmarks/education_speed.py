"""Speed of education distillation (ED): grade switches and last-grade epochs.

Runs one subprocess per backend (with the driver, flags and helpers of
`benchmarks/_harness.py`, as `benchmarks/distiller_speed.py`) and, inside it, measures on
random 28x28x1 images of 10 classes, split into the contiguous groups
[0, 3), [3, 6), [6, 10) (`ClassPartition.contiguous(10, "1:1:1")`):

(1) Grade-switch cost. A 3-grade `GradedStudent` cut from
    `keras_edu.models.resnet8` at its stage ends, three specialist teachers
    (conv stacks `--teacher-widths`, one per group), one `fit()` of
    `--switch-epochs` epochs with `GradeCallback(boundaries=...)`; every
    epoch is timed. The first epoch of a grade pays for `set_grade` (new
    student, optimizer, curriculum) and for retracing / compiling the new
    train step, so

        switch cost = t(boundary epoch) - t(next epoch, same grade)

    reported as a fraction of that next epoch (target <= 5%). The time of
    `set_grade` alone is shown too, and so is the same difference for the
    first epoch of the fit (the initial trace/compile), for comparison.
    "sequential" runs the same train step as "interleaved" (one group per
    batch, `keras.ops.switch` over the teachers), so `--switch-orders`
    defaults to "stratified" (the default order) and "interleaved".

(2) Last-grade epoch. The graded student at grade 3 (= the graduated
    resnet8) with the three specialists, fed by a `CurriculumDataset` of
    each `--orders` order, against single-teacher KD: `keras_edu.Distiller`
    with a fresh resnet8 and one teacher of the same size (10 outputs), on
    the same arrays and batch size. Rows are interleaved and rotated as in
    distiller_speed.py (one warm-up epoch each, then `--epochs` rounds);
    the ED models of (1) are reused here, already at grade 3 and compiled;
    the ratio of median epoch times ED / KD has a target of <= 1.10.

All models use SGD(momentum=0.9), alpha 0.3, T 4, `verbose=0`, no metrics.
Every time is given as wall time and as process CPU time (see
distiller_speed.py: pinned to one core, CPU time is what the run would
take on an idle core), each with its verdict.

Usage:

    python benchmarks/education_speed.py                  # all three backends
    python benchmarks/education_speed.py --backends jax --samples 3200
    python benchmarks/education_speed.py --json /tmp/ed_speed.json
"""

import argparse
import functools
import os
import platform
import statistics
import sys
import time


import _harness as harness  # benchmarks/, sys.path[0] of this script

ORDERS = ("stratified", "interleaved", "sequential")
SAME_STEP = {"interleaved": "sequential", "sequential": "interleaved"}
NUM_CLASSES = 10
SWITCH_TARGET = 0.05
EPOCH_RATIO_TARGET = 1.10


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    harness.add_runtime_arguments(parser)
    parser.add_argument("--samples", type=int, default=6400)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--teacher-widths", default="64,128,128", help="Conv widths.")
    parser.add_argument(
        "--boundaries",
        default="2,4",
        help="Epochs at which grades 2 and 3 start in (1) (default: %(default)s).",
    )
    parser.add_argument(
        "--switch-epochs",
        type=int,
        default=6,
        help="Epochs of the fit of (1) (default: %(default)s).",
    )
    parser.add_argument(
        "--switch-orders",
        default="stratified,interleaved",
        help="Curriculum orders of (1), one fit each (default: %(default)s).",
    )
    parser.add_argument(
        "--orders",
        default=",".join(ORDERS),
        help="Curriculum orders of (2) (default: %(default)s).",
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="Untimed epochs per row of (2)."
    )
    parser.add_argument("--epochs", type=int, default=3, help="Timed rounds of (2).")
    args = parser.parse_args(argv)
    args.backends = harness.split_list(args.backends, harness.ALL_BACKENDS, "--backends")
    args.orders = harness.split_list(args.orders, ORDERS, "--orders")
    args.switch_orders = (
        harness.split_list(args.switch_orders, ORDERS, "--switch-orders")
        if args.switch_orders
        else []
    )
    args.boundaries = [int(b) for b in args.boundaries.split(",")]
    if len(args.boundaries) != 2 or args.boundaries[-1] >= args.switch_epochs - 1:
        parser.error(
            "--boundaries needs two epochs, the last < --switch-epochs - 1 so "
            "that a steady epoch follows it."
        )
    if args.epochs < 1 or args.warmup < 0:
        parser.error("--epochs must be >= 1 and --warmup >= 0.")
    return args


# ---------------------------------------------------------------------------
# Worker: one backend, inside its own process.
# ---------------------------------------------------------------------------


def run_worker(args):
    import json

    import keras
    import numpy as np

    import keras_edu

    jit = harness.configure_worker(args)
    teacher_widths = [int(w) for w in args.teacher_widths.split(",")]
    rng = np.random.default_rng(args.seed)
    x = rng.random((args.samples, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, size=(args.samples,)).astype("int32")
    partition = keras_edu.ClassPartition.contiguous(NUM_CLASSES, "1:1:1")

    def resnet8():
        keras.utils.set_random_seed(args.seed + 1)
        return keras_edu.models.resnet8(
            num_classes=NUM_CLASSES, input_shape=(28, 28, 1)
        )

    def compiled(model):
        model.compile(
            optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9),
            jit_compile=jit,
        )
        return model

    def education_distiller():
        student = keras_edu.GradedStudent.from_model(
            resnet8(),
            split_at=keras_edu.models.stage_ends("resnet8"),
            partition=partition,
        )
        teachers = [
            keras_edu.Teacher(
                harness.cnn(teacher_widths, len(group), f"teacher{k}", args.seed + 2 + k),
                classes=list(group),
            )
            for k, group in enumerate(partition.groups)
        ]
        return keras_edu.Distiller(student, teachers, alpha=0.3, temperature=4.0)

    def curriculum(order, grade):
        return keras_edu.CurriculumDataset(
            x,
            y,
            partition=partition,
            batch_size=args.batch_size,
            order=order,
            seed=args.seed,
            grade=grade,
        )

    class TimedGradeCallback(keras_edu.GradeCallback):
        """`GradeCallback` that records how long each `set_grade` takes
        (wall and CPU seconds)."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.set_grade_seconds = {}

        def on_epoch_begin(self, epoch, logs=None):
            start, cpu_start = time.perf_counter(), time.process_time()
            grade = self.model.grade
            super().on_epoch_begin(epoch, logs)
            if self.model.grade != grade:
                self.set_grade_seconds[epoch] = (
                    time.perf_counter() - start,
                    time.process_time() - cpu_start,
                )

    started = time.perf_counter()
    load_start = harness.load_average()

    # (1) One fit with grade switches per order.
    switch, trained = {}, {}
    for order in args.switch_orders:
        model = compiled(education_distiller())
        timer = harness.epoch_timer()  # First: its clock starts before set_grade.
        schedule = TimedGradeCallback(
            boundaries=args.boundaries,
            order=order,
            seed=args.seed,
        )
        fit_start, fit_cpu_start = time.perf_counter(), time.process_time()
        model.fit(
            x,
            y,
            batch_size=args.batch_size,
            epochs=args.switch_epochs,
            verbose=0,
            callbacks=[timer, schedule],
        )
        fit_seconds = (
            time.perf_counter() - fit_start,
            time.process_time() - fit_cpu_start,
        )
        trained[order] = model  # At grade 3, its step compiled: reused in (2).
        data = curriculum(order, 1)
        grade_steps = {}
        for grade in (1, 2, 3):
            data.set_grade(grade)
            grade_steps[grade] = len(data)
        switch[order] = {
            "epoch_seconds": timer.times,
            "cpu_seconds": timer.cpu_times,
            "grades": [schedule.grade_at(e) for e in range(args.switch_epochs)],
            "steps": [
                grade_steps[schedule.grade_at(e)] for e in range(args.switch_epochs)
            ],
            "faults": timer.faults,
            "fit_seconds": fit_seconds,
            "set_grade_seconds": {
                str(k): v for k, v in schedule.set_grade_seconds.items()
            },
        }

    # (2) The last grade: ED with three specialists per order vs 1-teacher KD.
    def kd_row():
        teacher = harness.cnn(teacher_widths, NUM_CLASSES, "teacher0", args.seed + 2)
        model = keras_edu.Distiller(resnet8(), [teacher], alpha=0.3, temperature=4.0)
        return harness.fit_epoch_row(compiled(model), x, y, args.batch_size)

    def ed_row(order):
        # "interleaved" and "sequential" run the same train step: either's
        # model from (1) serves both. A model from (1) is at grade 3 already.
        model = trained.get(order) or trained.get(SAME_STEP.get(order))
        if model is None:
            model = education_distiller()
            model.set_grade(3)
            compiled(model)
        data = curriculum(order, 3)
        steps[order] = len(data)
        return harness.fit_epoch_row(model, data)

    steps = {"kd": -(-args.samples // args.batch_size)}
    builders = {"kd": kd_row}
    builders.update({order: functools.partial(ed_row, order) for order in args.orders})
    rows = harness.run_rounds(
        builders, ["kd"] + list(args.orders), args.warmup, args.epochs
    )

    # The curriculum's own bookkeeping at a switch, alone: `set_grade`
    # refreshes the batch counts of the Keras epoch iterators that serve it
    # (recorded by `keras_edu._keras_internals.epoch_iterators_over`).
    data = curriculum("stratified", 1)
    start = time.perf_counter()
    data.set_grade(2)
    curriculum_set_grade = time.perf_counter() - start

    result = {
        **harness.worker_info(),
        "total_seconds": time.perf_counter() - started,
        "load_average": [load_start, harness.load_average()],
        "curriculum_set_grade_seconds": curriculum_set_grade,
        "switch": switch,
        "last_grade": {
            name: {
                "epoch_seconds": timer.times,
                "median": statistics.median(timer.times),
                "cpu_seconds": timer.cpu_times,
                "cpu_median": statistics.median(timer.cpu_times),
                "steps": steps[name],
                "page_faults_per_step": statistics.median(timer.faults) / steps[name],
                "warmup_seconds": warmup,
            }
            for name, (_, timer, warmup) in rows.items()
        },
    }
    with open(args.worker_out, "w") as f:
        json.dump(result, f)


# ---------------------------------------------------------------------------
# Driver: the tables.
# ---------------------------------------------------------------------------


def switch_costs(run, key="epoch_seconds"):
    """Per boundary (and for the fit's first epoch): the cost of its first epoch.

    Returns dicts with the epoch, grade, the first and next epoch times
    (`key`: "epoch_seconds" for wall time, "cpu_seconds" for CPU time), the
    cost (first - next) in seconds and as a fraction of the next epoch, and
    the same against the median of the grade's later epochs.
    """
    times, grades = run[key], run["grades"]
    costs = []
    for epoch, grade in enumerate(grades):
        if epoch and grades[epoch - 1] == grade:
            continue
        later = [t for e, t in enumerate(times) if e > epoch and grades[e] == grade]
        if not later:
            continue
        steady = statistics.median(later)
        costs.append(
            {
                "epoch": epoch,
                "grade": grade,
                "first": times[epoch],
                "next": later[0],
                "seconds": times[epoch] - later[0],
                "fraction": (times[epoch] - later[0]) / later[0],
                "fraction_of_median": (times[epoch] - steady) / steady,
                "set_grade": run["set_grade_seconds"].get(str(epoch)),
            }
        )
    return costs


def format_tables(results, args):
    header = (
        f"{args.samples} samples 28x28x1, 10 classes in groups [0,3) [3,6) "
        f"[6,10); batch {args.batch_size}; student resnet8 (graded at its "
        f"stage ends); teachers conv {args.teacher_widths}; "
        f"jit_compile={args.jit_compile}; threads={args.threads or 'default'}; "
        f"malloc={'tuned' if args.tune_malloc else 'default'}; "
        f"{platform.node()} ({os.cpu_count()} CPUs)"
    )
    lines = [header]
    for result in results:
        lines.append("")
        if "error" in result:
            lines.append(f"[{result['backend']}] FAILED: {result['error']}")
            continue
        lines.append(harness.backend_line(result))
        lines += _switch_lines(result, args)
        lines += _last_grade_lines(result, args)
    return "\n".join(lines)


def _ok(value, target):
    return "ok" if value <= target else "MISSED"


def _switch_lines(result, args):
    lines = []
    for order, run in result["switch"].items():
        lines.append(
            f"  (1) grade switches, order={order}, boundaries {args.boundaries}, "
            f"{args.switch_epochs} epochs in one fit()"
        )
        lines.append(
            f"      {'epoch':>5} {'grade':>5} {'steps':>5} {'wall s':>8} "
            f"{'ms/step':>8} {'cpu s':>8} {'faults/step':>11}"
        )
        for epoch, seconds in enumerate(run["epoch_seconds"]):
            steps = run["steps"][epoch]
            lines.append(
                f"      {epoch:5d} {run['grades'][epoch]:5d} {steps:5d} "
                f"{seconds:8.3f} {1000 * seconds / steps:8.2f} "
                f"{run['cpu_seconds'][epoch]:8.3f} "
                f"{run['faults'][epoch] / steps:11.0f}"
            )
        if "fit_seconds" in run:
            wall, cpu_seconds = run["fit_seconds"]
            lines.append(
                f"      whole fit(): wall {wall:.3f} s, cpu {cpu_seconds:.3f} s "
                f"(all threads)"
            )
        for cost, cpu in zip(switch_costs(run), switch_costs(run, "cpu_seconds")):
            if cost["epoch"] == 0:
                what, verdict = "first epoch of the fit (initial trace)", ""
            else:
                what = f"switch to grade {cost['grade']} (epoch {cost['epoch']})"
                verdict = (
                    f"; target <= {SWITCH_TARGET:.0%}: "
                    f"wall {_ok(cost['fraction'], SWITCH_TARGET)}, "
                    f"cpu {_ok(cpu['fraction'], SWITCH_TARGET)}"
                )
            set_grade = ""
            if cost["set_grade"]:
                wall, cpu_seconds = cost["set_grade"]
                set_grade = f"; set_grade {wall:.3f} s wall, {cpu_seconds:.3f} s cpu"
            lines.append(f"      {what}:")
            lines.append(
                f"        wall {cost['first']:.3f} - {cost['next']:.3f} = "
                f"{cost['seconds']:+.3f} s = {cost['fraction']:+.1%} of an epoch "
                f"({cost['fraction_of_median']:+.1%} vs the median of the later "
                f"epochs); cpu {cpu['first']:.3f} - {cpu['next']:.3f} = "
                f"{cpu['seconds']:+.3f} s = {cpu['fraction']:+.1%}{set_grade}"
                f"{verdict}"
            )
    return lines


def _last_grade_lines(result, args):
    rows = result["last_grade"]
    lines = [
        (
            f"  (2) last grade (3): median of {args.epochs} epoch(s) after "
            f"{args.warmup} warm-up, rows interleaved"
        ),
        (
            f"      {'row':<36} {'median s':>8} {'min s':>7} {'max s':>7} "
            f"{'steps':>5} {'ms/step':>8} {'cpu s':>7} {'faults/step':>11} "
            f"{'vs KD':>6} {'cpu vs KD':>9}"
        ),
    ]
    kd = rows.get("kd")
    for name, row in rows.items():
        title = (
            "KD, 1 teacher (resnet8)"
            if name == "kd"
            else f"ED grade 3, 3 specialists, {name}"
        )
        times = row["epoch_seconds"]
        ratio = row["median"] / kd["median"] if kd else float("nan")
        cpu_ratio = row["cpu_median"] / kd["cpu_median"] if kd else float("nan")
        verdict = ""
        if name != "kd":
            verdict = (
                f"  target <= {EPOCH_RATIO_TARGET:.2f}: wall "
                f"{_ok(ratio, EPOCH_RATIO_TARGET)}, cpu "
                f"{_ok(cpu_ratio, EPOCH_RATIO_TARGET)}"
            )
        lines.append(
            f"      {title:<36} {row['median']:8.3f} {min(times):7.3f} "
            f"{max(times):7.3f} {row['steps']:5d} "
            f"{1000 * row['median'] / row['steps']:8.2f} "
            f"{row['cpu_median']:7.3f} {row['page_faults_per_step']:11.0f} "
            f"{ratio:6.3f} {cpu_ratio:9.3f}{verdict}"
        )
    lines.append(
        f"      CurriculumDataset.set_grade alone: "
        f"{result['curriculum_set_grade_seconds']:.3f} s"
    )
    return lines


def main(argv=None):
    return harness.run_script(
        argv, parse_args, run_worker, format_tables, script=__file__
    )


if __name__ == "__main__":
    sys.exit(main())
