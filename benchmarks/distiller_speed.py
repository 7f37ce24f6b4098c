"""Epoch time of `keras_edu.Distiller` against core Keras, on every backend.

Runs one subprocess per backend (`KERAS_BACKEND` set before Keras is
imported) and, inside it, times five rows on the same data, the same batch
size and the same architectures (fresh, identically seeded models per row):

    (a) student `fit` alone (sparse cross-entropy from logits)
    (b) teacher `predict`
    (c) core `keras.distillation.Distiller` + `LogitsDistillation(T=4)`,
        `student_loss_weight=0.3`
    (d) `keras_edu.Distiller(student, [teacher])`, alpha 0.3, T 4
    (e) `keras_edu.Distiller` with three specialist teachers (each the size of
        the single teacher) over the contiguous class groups 0-2, 3-5, 6-9,
        on mixed batches
    (f) (d) with `cache_teachers=True`: the teacher's logits computed once
        per `fit` call, before its first epoch (the one-time cost, reported
        as `cache fill s`, is outside the timed epochs)

and reports the median epoch wall time of each (after `--warmup` untimed
epochs), with the ratios d/c (target <= 1.0), d/(a+b) (target <= 1.05) and
e/d and f/a (target <= 1.15). Every row uses SGD(momentum=0.9), `verbose=0`, no metrics, and times
its epochs with a callback (`on_epoch_begin/end`; `on_predict_begin/end` for
the teacher's predict pass).

The rows are *interleaved*: after one warm-up epoch of every row, each timed
round runs one epoch of every row, in an order rotated by one row per round.
On a noisy machine a slow spell then hits every row of a round instead of
biasing one row, so the ratios are steadier than with back-to-back
`fit(epochs=N)` calls.

Each epoch's process CPU time (`time.process_time()`, all threads) is
recorded next to its wall time, with the ratios of the CPU-time medians.
Pinned to one core (`taskset -c 1`) with single-threaded kernels, a worker
can use at most one core, so its CPU time is the wall time it would take on
an idle core; when other processes share that core, wall times grow by
however long the worker waits for it and the CPU-time ratios are the
steadier ones. (CPU time still grows somewhat under contention: caches are
shared.)

Two machine effects are large enough to swamp the ratios, hence the flags:

* `--threads` (default 1): torch's 2-thread OpenMP kernels slow down 5-20x,
  by a different factor per row, as soon as another process takes one of
  two cores.
* `--tune-malloc`: with glibc's default dynamic thresholds a torch (or
  JAX) step that frees tens of MB gets it back from the kernel as page
  faults on the next step; on this VM ~10k faults/step cost 15-35 ms/step,
  and how many depends on the heap history of the process, not on the row.
  The `faults/step` column shows it.

Usage:

    python benchmarks/distiller_speed.py                  # all three backends
    python benchmarks/distiller_speed.py --backends torch --epochs 5
    python benchmarks/distiller_speed.py --json /tmp/speed.json

The workers import the keras_edu of the checkout this script lives in (the
repository root is appended to `PYTHONPATH`). To time a modified copy, put
it on `PYTHONPATH`: `PYTHONPATH=/tmp/copy python benchmarks/...`; the report
prints which `keras_edu` each backend imported.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import _harness as harness  # benchmarks/, sys.path[0] of this script

ALL_ROWS = ("a", "b", "c", "d", "e", "f")
ROW_TITLES = {
    "a": "student fit",
    "b": "teacher predict",
    "c": "core keras Distiller",
    "d": "keras_edu Distiller, 1 teacher",
    "e": "keras_edu Distiller, 3 specialists",
    "f": "keras_edu Distiller, 1 teacher, cached",
}
# ClassPartition-like contiguous groups over 10 classes.
SPECIALIST_GROUPS = ((0, 1, 2), (3, 4, 5), (6, 7, 8, 9))
RATIO_TARGETS = {"d/c": 1.0, "d/(a+b)": 1.05, "e/d": None, "f/a": 1.15}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    harness.add_runtime_arguments(parser)
    parser.add_argument(
        "--rows",
        default=",".join(ALL_ROWS),
        help="Comma-separated rows to time (default: %(default)s).",
    )
    parser.add_argument("--samples", type=int, default=6400)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1, help="Untimed epochs per row.")
    parser.add_argument("--epochs", type=int, default=3, help="Timed epochs per row.")
    parser.add_argument("--student-widths", default="16,32,32", help="Conv widths.")
    parser.add_argument("--teacher-widths", default="64,128,128", help="Conv widths.")
    args = parser.parse_args(argv)
    args.backends = harness.split_list(args.backends, harness.ALL_BACKENDS, "--backends")
    args.rows = harness.split_list(args.rows, ALL_ROWS, "--rows")
    if args.epochs < 1 or args.warmup < 0:
        parser.error("--epochs must be >= 1 and --warmup >= 0.")
    return args


# ---------------------------------------------------------------------------
# Worker: one backend, inside its own process.
# ---------------------------------------------------------------------------


def run_worker(args):
    import keras
    import numpy as np

    import keras_edu

    jit = harness.configure_worker(args)
    student_widths = [int(w) for w in args.student_widths.split(",")]
    teacher_widths = [int(w) for w in args.teacher_widths.split(",")]
    num_classes = args.num_classes

    rng = np.random.default_rng(args.seed)
    x = rng.random((args.samples, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, num_classes, size=(args.samples,)).astype("int32")

    def student():
        return harness.cnn(student_widths, num_classes, "student", args.seed + 1)

    def teacher(outputs=num_classes, k=0):
        return harness.cnn(teacher_widths, outputs, f"teacher{k}", args.seed + 2 + k)

    def sgd():
        return keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)

    def sparse_ce():
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def fit_row(model):
        return harness.fit_epoch_row(model, x, y, args.batch_size)

    def row_a():
        model = student()
        model.compile(optimizer=sgd(), loss=sparse_ce(), jit_compile=jit)
        return fit_row(model)

    def row_b():
        model = teacher()
        # Compiled only to carry the same `jit_compile` as the other rows.
        model.compile(loss=sparse_ce(), jit_compile=jit)
        timer = harness.epoch_timer()

        def epoch():
            model.predict(x, batch_size=args.batch_size, verbose=0, callbacks=[timer])

        return epoch, timer

    def row_c():
        model = keras.distillation.Distiller(
            teacher=teacher(),
            student=student(),
            distillation_losses=keras.distillation.LogitsDistillation(temperature=4.0),
            student_loss_weight=0.3,
        )
        model.compile(optimizer=sgd(), loss=sparse_ce(), jit_compile=jit)
        return fit_row(model)

    def row_d():
        model = keras_edu.Distiller(student(), [teacher()], alpha=0.3, temperature=4.0)
        model.compile(optimizer=sgd(), jit_compile=jit)
        return fit_row(model)

    def row_e():
        teachers = [
            keras_edu.Teacher(teacher(len(group), k), classes=list(group))
            for k, group in enumerate(SPECIALIST_GROUPS)
        ]
        model = keras_edu.Distiller(student(), teachers, alpha=0.3, temperature=4.0)
        model.compile(optimizer=sgd(), jit_compile=jit)
        return fit_row(model)

    def row_f():
        model = keras_edu.Distiller(
            student(), [teacher()], alpha=0.3, temperature=4.0, cache_teachers=True
        )
        model.compile(optimizer=sgd(), jit_compile=jit)
        epoch, timer = fit_row(model)
        timer.cache_fill_seconds = lambda: model.teacher_cache_seconds
        return epoch, timer

    builders = {
        "a": row_a, "b": row_b, "c": row_c, "d": row_d, "e": row_e, "f": row_f,
    }
    if "e" in args.rows and num_classes != 10:
        raise SystemExit("Row (e) needs --num-classes 10.")

    load_start = harness.load_average()
    started = time.perf_counter()
    rows = harness.run_rounds(builders, args.rows, args.warmup, args.epochs)

    result = {
        **harness.worker_info(),
        "steps_per_epoch": -(-args.samples // args.batch_size),
        "total_seconds": time.perf_counter() - started,
        "load_average": [load_start, harness.load_average()],
        "rows": {
            name: {
                "title": ROW_TITLES[name],
                "epoch_seconds": timer.times,
                "median": statistics.median(timer.times),
                "cpu_seconds": timer.cpu_times,
                "cpu_median": statistics.median(timer.cpu_times),
                "page_faults_per_step": statistics.median(timer.faults)
                / -(-args.samples // args.batch_size),
                "warmup_seconds": warmup,
                **(
                    {"cache_fill_seconds": timer.cache_fill_seconds()}
                    if hasattr(timer, "cache_fill_seconds")
                    else {}
                ),
            }
            for name, (_, timer, warmup) in rows.items()
        },
    }
    result["ratios"] = _ratios({k: v["median"] for k, v in result["rows"].items()})
    # Ratios of the fastest epochs: on a noisy machine the minimum is the
    # steadier estimate of a row's own cost.
    result["ratios_of_minimums"] = _ratios(
        {k: min(v["epoch_seconds"]) for k, v in result["rows"].items()}
    )
    # Ratios of CPU time: what the rows cost when nothing else wants core 1.
    result["ratios_cpu"] = _ratios(
        {k: v["cpu_median"] for k, v in result["rows"].items()}
    )
    with open(args.worker_out, "w") as f:
        json.dump(result, f)


def _ratios(medians):
    ratios = {}
    if {"c", "d"} <= medians.keys():
        ratios["d/c"] = medians["d"] / medians["c"]
    if {"a", "b", "d"} <= medians.keys():
        ratios["d/(a+b)"] = medians["d"] / (medians["a"] + medians["b"])
    if {"d", "e"} <= medians.keys():
        ratios["e/d"] = medians["e"] / medians["d"]
    if {"a", "f"} <= medians.keys():
        ratios["f/a"] = medians["f"] / medians["a"]
    return ratios


# ---------------------------------------------------------------------------
# Driver: one subprocess per backend, then the table.
# ---------------------------------------------------------------------------


def format_table(results, args):
    lines = []
    header = (
        f"{args.samples} samples, batch {args.batch_size}, "
        f"{-(-args.samples // args.batch_size)} steps/epoch; median of "
        f"{args.epochs} epoch(s) after {args.warmup} warm-up; "
        f"student {args.student_widths}, teacher {args.teacher_widths}; "
        f"jit_compile={args.jit_compile}; threads={args.threads or 'default'}; "
        f"malloc={'tuned' if args.tune_malloc else 'default'}; "
        f"{platform.node()} "
        f"({os.cpu_count()} CPUs, load average at start "
        f"{harness.load_average()})"
    )
    lines.append(header)
    for result in results:
        backend = result["backend"]
        lines.append("")
        if "error" in result:
            lines.append(f"[{backend}] FAILED: {result['error']}")
            continue
        lines.append(harness.backend_line(result))
        lines.append(
            f"  {'row':<40} {'median s':>9} {'min s':>7} {'max s':>7}"
            f" {'ms/step':>8} {'cpu s':>7} {'cpu ms/step':>11} {'faults/step':>11}"
        )
        steps = result["steps_per_epoch"]
        for name, row in result["rows"].items():
            times = row["epoch_seconds"]
            cpu = row.get("cpu_median", float("nan"))
            lines.append(
                f"  ({name}) {row['title']:<36} {row['median']:9.3f} "
                f"{min(times):7.3f} {max(times):7.3f} "
                f"{1000 * row['median'] / steps:8.2f} {cpu:7.3f} "
                f"{1000 * cpu / steps:11.2f} "
                f"{row['page_faults_per_step']:11.0f}"
            )
        medians = {k: v["median"] for k, v in result["rows"].items()}
        if {"a", "b"} <= medians.keys():
            cpu = {
                k: v.get("cpu_median", float("nan")) for k, v in result["rows"].items()
            }
            lines.append(
                f"  {'(a)+(b)':<40} {medians['a'] + medians['b']:9.3f} "
                f"{'':7} {'':7} {'':8} {cpu['a'] + cpu['b']:7.3f}"
            )
        fill = result["rows"].get("f", {}).get("cache_fill_seconds")
        if fill is not None:
            lines.append(f"  {'(f) cache fill s (once per fit call)':<40} {fill:9.3f}")
        lines += _ratio_lines(result)
    return "\n".join(lines)


def _ratio_lines(result):
    """One line per ratio: of wall medians, of wall minimums, of CPU medians."""
    lines = []
    minimums = result.get("ratios_of_minimums", {})
    of_cpu = result.get("ratios_cpu", {})
    for key, value in result["ratios"].items():
        target = RATIO_TARGETS[key]
        line = f"  ratio {key:<8} wall {value:6.3f} (of minimums {minimums[key]:.3f})"
        if key in of_cpu:
            line += f", cpu {of_cpu[key]:6.3f}"
        if target is not None:
            verdicts = [("wall", value)] + (
                [("cpu", of_cpu[key])] if key in of_cpu else []
            )
            line += f"  target <= {target:.2f}: " + ", ".join(
                f"{what} {'ok' if v <= target else 'MISSED'}" for what, v in verdicts
            )
        lines.append(line)
    return lines


def main(argv=None):
    return harness.run_script(argv, parse_args, run_worker, format_table, __file__)


if __name__ == "__main__":
    sys.exit(main())
