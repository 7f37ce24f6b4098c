"""Step time of AMTML-KD against AVER, same three teachers, on every backend.

Runs one subprocess per backend (the driver and flags of
`benchmarks/_harness.py`) and, inside it, times three rows on the same
data, with the same student and the same three teachers of different
architectures (zoo models: resnet14, wrn_16_1, resnet8x4; student resnet8;
28x28x1 inputs, 10 classes):

    (aver)    `keras_edu.Distiller(student, teachers)`: the default
              `SoftTargetKD`, which averages the teachers' probabilities
    (weights) `loss=AMTML(angle_weight=0)`: instance-adaptive weights only
    (amtml)   `loss=AMTML(hints=..., angle_weight=1)`: weights, two hints
              (student stage2_out -> resnet14 stage2_out, student
              stage3_out -> wrn_16_1 stage3_out) and the RKD angle term

Each row is compiled with SGD(0.01, momentum 0.9) and `jit_compile`
(default auto), warmed up for `--warmup` epochs, then timed for `--epochs`
epochs interleaved with the other rows (one epoch of every row per round,
order rotated). The table gives the median epoch per step, in process CPU
time and in wall time, and the ratios weights/aver and amtml/aver; the
target (amtml <= 1.2x aver) is judged on CPU time, which does not count the
time a single-threaded process spends waiting for a shared core.

Before timing, a short check run counts, per row, how many times the
student's first convolution *executes* per training step (a counting
callback patched into it; `jit_compile=False` on TensorFlow, whose counter is
a `numpy_function`): it must be 1, i.e. the logits and every tapped feature
map come from one student forward.

Usage (pinned to one core, as reported in docs/many_teachers.md):

    taskset -c 0 python benchmarks/amtml_speed.py
    taskset -c 0 python benchmarks/amtml_speed.py --backends torch --epochs 5
"""

import argparse
import os
import statistics
import sys
import time

import _harness as harness  # benchmarks/, sys.path[0] of this script

ROWS = ("aver", "weights", "amtml")
ROW_TITLES = {
    "aver": "AVER (SoftTargetKD, 3 teachers)",
    "weights": "AMTML weights only",
    "amtml": "AMTML weights + 2 hints + angle",
}
TARGET = 1.2
TEACHERS = ("resnet14", "wrn_16_1", "resnet8x4")
STUDENT = "resnet8"
HINTS = [("stage2_out", 0, "stage2_out"), ("stage3_out", 1, "stage3_out")]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    harness.add_runtime_arguments(parser)
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1, help="Untimed epochs per row.")
    parser.add_argument("--epochs", type=int, default=3, help="Timed epochs per row.")
    args = parser.parse_args(argv)
    args.backends = harness.split_list(args.backends, harness.ALL_BACKENDS, "--backends")
    return args


def run_worker(args):
    import json

    import keras
    import numpy as np

    import keras_edu

    jit = harness.configure_worker(args)
    rng = np.random.default_rng(args.seed)
    x = rng.random((args.samples, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, size=(args.samples,)).astype("int32")

    def zoo(name, seed):
        keras.utils.set_random_seed(seed)
        return keras_edu.models.get(name, num_classes=10, input_shape=(28, 28, 1))

    teachers = [zoo(name, args.seed + 2 + k) for k, name in enumerate(TEACHERS)]

    def distiller(row):
        loss = None
        if row == "weights":
            loss = keras_edu.losses.AMTML(angle_weight=0.0)
        elif row == "amtml":
            loss = keras_edu.losses.AMTML(hints=HINTS, angle_weight=1.0)
        return keras_edu.Distiller(
            zoo(STUDENT, args.seed + 1), teachers, alpha=0.3, temperature=4.0,
            loss=loss,
        )

    def sgd():
        return keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)

    forwards = {row: count_student_forwards(distiller(row), x, y, sgd()) for row in ROWS}

    rows = {}
    for row in ROWS:
        model = distiller(row)
        model.compile(optimizer=sgd(), jit_compile=jit)
        timer = epoch_timer()

        def epoch(model=model, timer=timer):
            model.fit(x, y, batch_size=args.batch_size, epochs=1, verbose=0,
                      callbacks=[timer])

        start = time.perf_counter()
        for _ in range(args.warmup):
            epoch()
        rows[row] = (epoch, timer, time.perf_counter() - start)
        timer.times.clear()
        timer.cpu_times.clear()
    load_start = harness.load_average()
    started = time.perf_counter()
    for round_index in range(args.epochs):
        shift = round_index % len(ROWS)
        for row in ROWS[shift:] + ROWS[:shift]:
            rows[row][0]()

    steps = -(-args.samples // args.batch_size)
    result = {
        **harness.worker_info(),
        "steps_per_epoch": steps,
        "total_seconds": time.perf_counter() - started,
        "load_average": [load_start, harness.load_average()],
        "rows": {
            row: {
                "title": ROW_TITLES[row],
                "epoch_seconds": timer.times,
                "median": statistics.median(timer.times),
                "epoch_cpu_seconds": timer.cpu_times,
                "median_cpu": statistics.median(timer.cpu_times),
                "warmup_seconds": warmup,
                "student_forwards_per_step": forwards[row],
            }
            for row, (_, timer, warmup) in rows.items()
        },
    }
    with open(args.worker_out, "w") as f:
        json.dump(result, f)


def epoch_timer():
    """A callback recording each epoch's wall time and process CPU time.

    On a shared machine the wall time of a single-threaded run includes the
    time the process waited for the core; its CPU time does not, so the
    CPU-time ratio is the steadier measure of what a row costs.
    """
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times, self.cpu_times = [], []

        def on_epoch_begin(self, epoch, logs=None):
            self._wall, self._cpu = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self._wall)
            self.cpu_times.append(time.process_time() - self._cpu)

    return EpochTimer()


def count_student_forwards(distiller, x, y, optimizer, steps=2):
    """Executions of the student's first convolution per training step."""
    import keras
    import numpy as np
    from keras import ops

    backend = keras.backend.backend()
    calls = []
    layer = next(
        l for l in distiller.student.layers if isinstance(l, keras.layers.Conv2D)
    )
    original = layer.call

    def bump(rows):
        calls.append(int(rows))
        return np.zeros((), "float32")

    def counted(inputs, *args, **kwargs):
        rows = ops.shape(inputs)[0]
        if backend == "tensorflow":
            import tensorflow as tf

            tf.numpy_function(bump, [rows], Tout=tf.float32, stateful=True)
        elif backend == "jax":
            import jax

            jax.debug.callback(bump, rows)
        else:
            bump(rows)
        return original(inputs, *args, **kwargs)

    layer.call = counted
    try:
        distiller.compile(
            optimizer=optimizer, jit_compile=False if backend == "tensorflow" else "auto"
        )
        batch = 16
        calls.clear()
        distiller.fit(x[: steps * batch], y[: steps * batch], batch_size=batch,
                      epochs=1, verbose=0, shuffle=False)
    finally:
        layer.call = original
    return len(calls) / steps


def format_table(results, args):
    lines = [
        (
            f"{args.samples} samples, batch {args.batch_size}, "
            f"{-(-args.samples // args.batch_size)} steps/epoch; median of "
            f"{args.epochs} epoch(s) after {args.warmup} warm-up; student "
            f"{STUDENT}, teachers {', '.join(TEACHERS)}; jit_compile="
            f"{args.jit_compile}; threads={args.threads or 'default'}; "
            f"CPU affinity {sorted(os.sched_getaffinity(0))}"
        ),
        "",
        (
            "| backend | row | CPU ms/step | x AVER (CPU) | wall ms/step "
            "| x AVER (wall) | student forwards/step |"
        ),
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for result in results:
        backend = result["backend"]
        if "error" in result:
            notes.append(f"[{backend}] FAILED: {result['error']}")
            continue
        aver = result["rows"]["aver"]
        steps = result["steps_per_epoch"]
        for row, values in result["rows"].items():
            cpu = values["median_cpu"] / aver["median_cpu"]
            wall = values["median"] / aver["median"]
            verdict = "" if row == "aver" else (" ok" if cpu <= TARGET else " MISSED")
            lines.append(
                f"| {backend} | {values['title']} | "
                f"{1000 * values['median_cpu'] / steps:.1f} | {cpu:.3f}{verdict} | "
                f"{1000 * values['median'] / steps:.1f} | {wall:.3f} | "
                f"{values['student_forwards_per_step']:g} |"
            )
        notes.append(harness.backend_line(result))
    return "\n".join(
        lines + [""] + notes + [f"target: AMTML <= {TARGET}x AVER (CPU time)"]
    )


def main(argv=None):
    return harness.run_script(
        argv, parse_args, run_worker, format_table, script=__file__
    )


if __name__ == "__main__":
    sys.exit(main())
