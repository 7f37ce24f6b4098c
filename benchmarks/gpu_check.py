"""Steps per second of `keras_edu.Distiller` under float32 and mixed precision.

One prepared check for a GPU machine (and, with `--dry-run`, a smoke test on
a CPU). For each backend, in its own subprocess (`KERAS_BACKEND` is set
before Keras is imported), it times on synthetic 32x32x3 images:

* `student`: the student alone (`compile`/`fit` of core Keras), the baseline;
* `kd`: `Distiller(resnet8, [Teacher(resnet20)])`, alpha 0.3, T 4, SGD with
  momentum, under each dtype policy of `--policies` (default `float32`,
  `mixed_float16`, `mixed_bfloat16`);
* `ed`: education distillation of a graded ResNet-8 from three specialists
  and a full teacher (`generalists_teach="seen"`, `specialists_until_grade=2`)
  with two grade switches inside one `fit()` (`GradeCallback([1, 2])`), under
  the same policies.

and prints one table: steps/s of the timed epochs (the median epoch; for
`ed` the last grade's epochs, after the switches), the speedup over the same
run in float32, the final loss and whether it is finite. Teachers are
untrained (this measures speed and numerics, not accuracy) and built under
the same policy as the student.

Usage:

    bash benchmarks/gpu_check.sh                  # every backend that imports
    bash benchmarks/gpu_check.sh --backends jax --json /tmp/gpu.json
    python benchmarks/gpu_check.py --dry-run      # tiny sizes, a CPU smoke test

A backend whose framework is not installed is reported as skipped; a worker
that fails or runs past `--worker-timeout` is reported with its error, and
the rows measured before it stay in the table and the JSON.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

ALL_BACKENDS = ("tensorflow", "jax", "torch")
ALL_POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Full sizes for one GPU, and the dry-run sizes for a CPU smoke test.
FULL = dict(samples=10240, batch_size=256, warmup=1, epochs=2, width=1.0)
DRY = dict(samples=64, batch_size=16, warmup=1, epochs=1, width=0.25)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default=",".join(ALL_BACKENDS))
    parser.add_argument("--policies", default=",".join(ALL_POLICIES))
    parser.add_argument("--runs", default="student,kd,ed", help="Any of student, kd, ed.")
    parser.add_argument("--dry-run", action="store_true", help="Tiny sizes.")
    parser.add_argument("--width", type=float, help="Scale of every conv width (default 1).")
    parser.add_argument("--batch-size", type=int, help="Default 256 (16 with --dry-run).")
    parser.add_argument("--worker-timeout", type=float, default=300.0)
    parser.add_argument("--json", metavar="PATH", help="Write results here.")
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    parser.add_argument("--worker-backend", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name, allowed in (("backends", ALL_BACKENDS), ("policies", ALL_POLICIES),
                          ("runs", ("student", "kd", "ed"))):
        values = [v for v in getattr(args, name).split(",") if v]
        unknown = sorted(set(values) - set(allowed))
        if unknown or not values:
            parser.error(f"--{name}: {unknown or values} is not a subset of {allowed}.")
        setattr(args, name, values)
    return args


# ---------------------------------------------------------------- worker side


def _epoch_timer():
    """A Keras callback that records each epoch's wall time and final loss.

    Built on call, because the parent process never imports Keras.
    """
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds, self.losses = [], []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            # Keras converts the logs to floats at the end of an epoch, which
            # waits for the device: the time includes the work.
            self.seconds.append(time.perf_counter() - self._start)
            self.losses.append(float((logs or {}).get("loss", math.nan)))

    return EpochTimer()


def _widths(base, scale):
    return [max(4, int(w * scale)) for w in base]


def _models(sizes, num_classes=10):
    """A ResNet-8 student and a maker of ResNet-20 teachers (CIFAR layout)."""
    import keras_edu
    from keras_edu.models.resnet import cifar_resnet

    widths = _widths((16, 16, 32, 64), sizes["width"])
    student = cifar_resnet(8, widths, num_classes=num_classes, input_shape=(32, 32, 3))

    def teacher(classes):
        model = cifar_resnet(20, widths, num_classes=len(classes), input_shape=(32, 32, 3))
        return keras_edu.Teacher(model, classes=classes)

    return student, teacher


def _data(sizes, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.random((sizes["samples"], 32, 32, 3), dtype="float32")
    y = rng.integers(0, 10, sizes["samples"]).astype("int32")
    return x, y


def _distiller(run, sizes):
    import keras
    import keras_edu

    student, make_teacher = _models(sizes)
    if run == "student":  # The baseline: the student alone, core Keras.
        student.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return student, []
    if run == "kd":
        return keras_edu.Distiller(
            student, [make_teacher(list(range(10)))], alpha=0.3, temperature=4.0
        ), []
    partition = keras_edu.ClassPartition.contiguous(10, ratios="1:1:1")
    graded = keras_edu.GradedStudent.from_model(
        student, split_at=keras_edu.models.stage_ends("resnet8"), partition=partition
    )
    teachers = [make_teacher(list(g)) for g in partition.groups]
    teachers.append(make_teacher(list(range(10))))
    distiller = keras_edu.Distiller(
        graded, teachers, alpha=0.3, temperature=4.0,
        generalists_teach="seen", specialists_until_grade=2,
    )
    return distiller, [keras_edu.GradeCallback(boundaries=[1, 2])]


def time_run(run, policy, sizes):
    """Trains one configuration; returns its row (steps/s, final loss)."""
    import keras

    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        distiller, callbacks = _distiller(run, sizes)
        if run != "student":
            distiller.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
        x, y = _data(sizes)
        timer = _epoch_timer()
        # ED: one epoch in each of grades 1 and 2, then grade 3 for the
        # warm-up and the timed epochs; KD: warm-up then timed epochs.
        epochs = sizes["warmup"] + sizes["epochs"] + (2 if run == "ed" else 0)
        start = time.perf_counter()
        distiller.fit(x, y, batch_size=sizes["batch_size"], epochs=epochs,
                      verbose=0, callbacks=[*callbacks, timer])
        total = time.perf_counter() - start
    finally:
        keras.mixed_precision.set_global_policy("float32")
    timed = timer.seconds[-sizes["epochs"]:]
    steps = math.ceil(sizes["samples"] / sizes["batch_size"])
    final_loss = timer.losses[-1]
    return {
        "run": run,
        "policy": policy,
        "steps_per_epoch": steps,
        "epoch_seconds": timer.seconds,
        "steps_per_s": steps / statistics.median(timed),
        "fit_seconds": total,
        "final_loss": final_loss,
        "finite": math.isfinite(final_loss),
        "grade": getattr(distiller, "grade", None),
    }


def _device_name():
    import keras

    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return getattr(device, "device_kind", device.platform)
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return tf.config.experimental.get_device_details(gpus[0]).get(
        "device_name", "GPU") if gpus else "cpu"


def _cpu_threads():
    import keras

    if keras.backend.backend() == "torch":
        import torch

        return torch.get_num_threads()
    return os.cpu_count()


def _sizes(args):
    sizes = dict(DRY if args.dry_run else FULL)
    if args.width:
        sizes["width"] = args.width
    if args.batch_size:
        sizes["batch_size"] = args.batch_size
        sizes["samples"] = 40 * args.batch_size  # 40 steps per epoch, as the default.
    return sizes


def worker(args):
    """Runs inside a backend's subprocess; appends each row to the JSON file."""
    import keras

    sizes = _sizes(args)
    result = {"backend": keras.backend.backend(), "keras": keras.__version__,
              "device": _device_name(), "cpu_threads": _cpu_threads(), "rows": []}
    for run in args.runs:
        for policy in args.policies:
            try:
                result["rows"].append(time_run(run, policy, sizes))
            except Exception as e:  # A failure is a finding: record it, go on.
                result["rows"].append({"run": run, "policy": policy,
                                       "error": f"{type(e).__name__}: {e}"[:400]})
            # Written after every row, so a worker that is killed leaves them.
            with open(args.worker_out, "w") as f:
                json.dump(result, f)
    return result


# ---------------------------------------------------------------- parent side


def _framework_installed(backend):
    import importlib.util

    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[backend]
    return importlib.util.find_spec(module) is not None


def run_backend(backend, args):
    if not _framework_installed(backend):
        return {"backend": backend, "skipped": f"{backend} is not installed", "rows": []}
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    env = dict(os.environ, KERAS_BACKEND=backend)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), REPO) if p)
    command = [sys.executable, os.path.abspath(__file__), "--worker-out", out,
               "--worker-backend", backend, "--runs", ",".join(args.runs),
               "--policies", ",".join(args.policies)] + (["--dry-run"] if args.dry_run else [])
    for flag, value in (("--width", args.width), ("--batch-size", args.batch_size)):
        if value:
            command += [flag, str(value)]
    error = None
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True,
                              timeout=args.worker_timeout)
        if done.returncode:
            error = f"exit {done.returncode}: " + done.stderr.strip()[-600:]
    except subprocess.TimeoutExpired:
        error = f"ran past --worker-timeout={args.worker_timeout:g} s"
    try:
        with open(out) as f:
            result = json.load(f)
    except (OSError, ValueError):
        result = {"backend": backend, "rows": []}
    finally:
        os.unlink(out)
    if error:
        result["error"] = error
    return result


def speedups(result):
    """Adds each row's speedup over the float32 row of the same run."""
    base = {r["run"]: r["steps_per_s"] for r in result["rows"]
            if r.get("policy") == "float32" and "steps_per_s" in r}
    for row in result["rows"]:
        if "steps_per_s" in row and row["run"] in base:
            row["speedup"] = row["steps_per_s"] / base[row["run"]]
    return result


def table(results):
    lines = ["| backend | device | run | policy | steps/s | vs float32 | final loss | finite "
             "| grade |", "|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        device = result.get("device", "-")
        if "skipped" in result:
            lines.append(f"| {result['backend']} | - | - | - | skipped: {result['skipped']} | | | |")
        for row in result["rows"]:
            if "error" in row:
                lines.append(f"| {result['backend']} | {device} | {row['run']} | "
                             f"{row['policy']} | error: {row['error'][:120]} | | | |")
                continue
            speedup = f"{row['speedup']:.2f}x" if "speedup" in row else "-"
            lines.append(f"| {result['backend']} | {device} | {row['run']} | {row['policy']} | "
                         f"{row['steps_per_s']:.1f} | {speedup} | {row['final_loss']:.4f} | "
                         f"{'yes' if row['finite'] else 'NO'} | {row['grade'] or '-'} |")
        if "error" in result:
            lines.append(f"| {result['backend']} | {device} | worker failed: "
                         f"{result['error'][-200:]!r} | | | | | |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.worker_out:
        worker(args)
        return 0
    results = []
    for backend in args.backends:
        results.append(speedups(run_backend(backend, args)))
        print(f"{backend}: done", file=sys.stderr, flush=True)
        if args.json:  # As we go: a stopped check still leaves its numbers.
            with open(args.json, "w") as f:
                json.dump({"sizes": _sizes(args), "results": results}, f, indent=1)
    print(table(results))
    failed = any("error" in r or any("error" in row or not row.get("finite", True)
                                     for row in r["rows"]) for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
