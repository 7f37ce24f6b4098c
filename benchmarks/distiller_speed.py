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
import subprocess
import sys
import tempfile
import time

ALL_BACKENDS = ("tensorflow", "jax", "torch")
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
# glibc: no mmap for blocks up to 32 MiB (its maximum) and never trim the
# heap, instead of its dynamic thresholds.
TUNED_MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(32 * 1024 * 1024),
    "MALLOC_TRIM_THRESHOLD_": str(2**40),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_runtime_arguments(parser)
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
    args.backends = _split(args.backends, ALL_BACKENDS, "--backends")
    args.rows = _split(args.rows, ALL_ROWS, "--rows")
    if args.epochs < 1 or args.warmup < 0:
        parser.error("--epochs must be >= 1 and --warmup >= 0.")
    return args


def add_runtime_arguments(parser):
    """The flags every speed benchmark shares: backends, threads, malloc, output.

    `benchmarks/education_speed.py` imports this module for them.
    """
    parser.add_argument(
        "--backends",
        default=",".join(ALL_BACKENDS),
        help="Comma-separated backends (default: %(default)s).",
    )
    parser.add_argument(
        "--jit-compile",
        default="auto",
        choices=("auto", "true", "false"),
        help="`jit_compile` of every compiled model (default: auto).",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="Intra-op threads of every backend (default: %(default)s); 0 "
        "keeps the frameworks' defaults. On a shared 2-core machine torch's "
        "2-thread OpenMP kernels slow down 5-20x whenever another process "
        "takes a core, by a different factor per row, so the default is "
        "single-threaded kernels.",
    )
    parser.add_argument(
        "--tune-malloc",
        action="store_true",
        help="Run the workers with glibc malloc told to keep freed memory "
        f"({' '.join(f'{k}={v}' for k, v in TUNED_MALLOC_ENV.items())}). "
        "Without it a torch or JAX step that frees tens of MB gets it back "
        "from the kernel next step as page faults (see faults/step).",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="Write results here.")
    parser.add_argument(
        "--timeout",
        type=float,
        default=900,
        help="Seconds before a backend's subprocess is killed.",
    )
    # Internal: run the rows for the backend in KERAS_BACKEND.
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)


def _split(text, allowed, flag):
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        raise SystemExit(f"{flag}: unknown {bad}; choose from {allowed}.")
    return items


# ---------------------------------------------------------------------------
# Worker: one backend, inside its own process.
# ---------------------------------------------------------------------------


def run_worker(args):
    import keras
    import numpy as np

    import keras_edu

    jit = configure_worker(args)
    student_widths = [int(w) for w in args.student_widths.split(",")]
    teacher_widths = [int(w) for w in args.teacher_widths.split(",")]
    num_classes = args.num_classes

    rng = np.random.default_rng(args.seed)
    x = rng.random((args.samples, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, num_classes, size=(args.samples,)).astype("int32")

    def student():
        return cnn(student_widths, num_classes, "student", args.seed + 1)

    def teacher(outputs=num_classes, k=0):
        return cnn(teacher_widths, outputs, f"teacher{k}", args.seed + 2 + k)

    def sgd():
        return keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)

    def sparse_ce():
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def fit_row(model):
        return fit_epoch_row(model, x, y, args.batch_size)

    def row_a():
        model = student()
        model.compile(optimizer=sgd(), loss=sparse_ce(), jit_compile=jit)
        return fit_row(model)

    def row_b():
        model = teacher()
        # Compiled only to carry the same `jit_compile` as the other rows.
        model.compile(loss=sparse_ce(), jit_compile=jit)
        timer = epoch_timer()

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

    load_start = _load_average()
    started = time.perf_counter()
    rows = run_rounds(builders, args.rows, args.warmup, args.epochs)

    result = {
        **worker_info(),
        "steps_per_epoch": -(-args.samples // args.batch_size),
        "total_seconds": time.perf_counter() - started,
        "load_average": [load_start, _load_average()],
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


def fit_epoch_row(model, x, y=None, batch_size=None):
    """`(epoch, timer)`: `epoch()` runs one `model.fit` epoch timed by `timer`."""
    timer = epoch_timer()

    def epoch():
        model.fit(
            x,
            y,
            batch_size=batch_size,
            epochs=1,
            verbose=0,
            callbacks=[timer],
        )

    return epoch, timer


def run_rounds(builders, names, warmup, epochs):
    """Times rows interleaved: `{name: (epoch, timer, warm-up seconds)}`.

    `builders[name]()` returns a row's `(epoch, timer)`. Each row is built
    and runs `warmup` untimed epochs (tracing / compiling its step), then
    each of the `epochs` rounds runs one epoch of every row, in an order
    rotated by one row per round.
    """
    rows = {}
    for name in names:
        epoch, timer = builders[name]()
        build_start = time.perf_counter()
        for _ in range(warmup):  # Traces / compiles the step.
            epoch()
        rows[name] = (epoch, timer, time.perf_counter() - build_start)
        timer.reset()
    for round_index in range(epochs):
        # Rotate the order each round so no row always follows the same one.
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            rows[name][0]()
    return rows


def configure_worker(args):
    """Applies `--threads` to torch; returns the `jit_compile` to compile with."""
    import keras

    if args.threads and keras.backend.backend() == "torch":
        import torch

        torch.set_num_threads(args.threads)
    return {"auto": "auto", "true": True, "false": False}[args.jit_compile]


def worker_info():
    """Versions and the `keras_edu` location of this worker, for the report."""
    import keras

    import keras_edu

    backend = keras.backend.backend()
    return {
        "backend": backend,
        "keras": keras.__version__,
        "keras_edu": getattr(keras_edu, "__version__", "?"),
        "keras_edu_path": os.path.dirname(keras_edu.__file__),
        "backend_version": _backend_version(backend),
    }


def cnn(widths, outputs, name, seed, input_shape=(28, 28, 1)):
    """A conv stack (stride 1, then 2) + global pooling + Dense logits."""
    import keras

    keras.utils.set_random_seed(seed)
    layers = [keras.Input(input_shape)]
    for i, width in enumerate(widths):
        layers.append(
            keras.layers.Conv2D(
                width,
                3,
                strides=1 if i == 0 else 2,
                padding="same",
                activation="relu",
            )
        )
    layers += [
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(outputs),  # logits
    ]
    return keras.Sequential(layers, name=name)


_EPOCH_TIMER_CLASS = []


def epoch_timer():
    """A new callback that records the wall time, process CPU time and minor
    page faults of each epoch (or predict pass) in `.times`, `.cpu_times`
    and `.faults`; `.reset()` forgets them (after warm-up)."""
    if not _EPOCH_TIMER_CLASS:
        import keras

        class EpochTimer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.reset()
                self._start = self._cpu_start = None
                self._faults = 0

            def reset(self):
                self.times, self.cpu_times, self.faults = [], [], []

            def _begin(self):
                self._faults = _minor_faults()
                self._cpu_start = time.process_time()
                self._start = time.perf_counter()

            def _end(self):
                self.times.append(time.perf_counter() - self._start)
                self.cpu_times.append(time.process_time() - self._cpu_start)
                self.faults.append(_minor_faults() - self._faults)

            def on_epoch_begin(self, epoch, logs=None):
                self._begin()

            def on_epoch_end(self, epoch, logs=None):
                self._end()

            def on_predict_begin(self, logs=None):
                self._begin()

            def on_predict_end(self, logs=None):
                self._end()

        _EPOCH_TIMER_CLASS.append(EpochTimer)
    return _EPOCH_TIMER_CLASS[0]()


def _minor_faults():
    try:
        import resource
    except ImportError:  # pragma: no cover - not on every platform
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _backend_version(backend):
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
    try:
        return __import__(module[backend]).__version__
    except (ImportError, AttributeError):  # pragma: no cover - informational
        return "?"


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


def run_backend(backend, args, argv, script=None):
    """Runs `script` (default: this file) as a worker for `backend`.

    The worker gets `argv` plus `--worker-out PATH` and must write its
    result there as JSON; returns that result, or `{"backend", "error"}`.
    """
    script = os.path.abspath(script or __file__)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        env = dict(os.environ, KERAS_BACKEND=backend)
        # Time the checkout this script lives in, unless PYTHONPATH already
        # names a keras_edu (entries before the repo win; both beat an
        # editable install that points elsewhere).
        repo = os.path.dirname(os.path.dirname(script))
        paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(paths + [repo])
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env.update(_thread_env(args.threads, env))
        if args.tune_malloc:
            env.update(TUNED_MALLOC_ENV)
        command = [sys.executable, script, *argv]
        command += ["--worker-out", out]
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                command,
                env=env,
                capture_output=True,
                text=True,
                timeout=args.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return {"backend": backend, "error": f"timeout ({args.timeout}s)"}
        if proc.returncode != 0 or not os.path.exists(out):
            tail = (proc.stderr or proc.stdout or "").strip()[-2000:]
            return {"backend": backend, "error": tail}
        with open(out) as f:
            result = json.load(f)
        result["process_seconds"] = time.perf_counter() - start
        return result


def _thread_env(threads, env):
    """Environment variables that cap the intra-op threads of each backend."""
    if not threads:
        return {}
    n = str(threads)
    out = {
        "OMP_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "TF_NUM_INTRAOP_THREADS": n,
        "TF_NUM_INTEROP_THREADS": n,
    }
    if threads == 1:
        xla = env.get("XLA_FLAGS", "")
        out["XLA_FLAGS"] = (
            xla + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        ).strip()
    return out


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
        f"{_load_average()})"
    )
    lines.append(header)
    for result in results:
        backend = result["backend"]
        lines.append("")
        if "error" in result:
            lines.append(f"[{backend}] FAILED: {result['error']}")
            continue
        lines.append(backend_line(result))
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


def backend_line(result):
    """`[backend version] keras ..., keras_edu from ... (time, load)`."""
    return (
        f"[{result['backend']} {result['backend_version']}] keras "
        f"{result['keras']}, keras_edu from {result['keras_edu_path']} "
        f"({result['process_seconds']:.0f}s, load average "
        f"{' -> '.join(result['load_average'])})"
    )


def drive(args, argv, format_results, script=None):
    """The driver: one worker subprocess per backend, the table, the JSON.

    `format_results(results, args)` returns the text to print. Returns the
    exit status: 1 if a backend failed.
    """
    # The workers get the same flags minus the driver-only ones.
    worker_argv = _strip_flags(argv, ("--json", "--backends", "--timeout"))
    results = []
    for backend in args.backends:
        print(f"... timing {backend}", file=sys.stderr, flush=True)
        results.append(run_backend(backend, args, worker_argv, script))
    print(format_results(results, args))
    if args.json:
        payload = {"config": vars(args), "results": results}
        payload["config"].pop("worker_out", None)
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)
    return 1 if any("error" in r for r in results) else 0


def run_script(argv, parse_args, run_worker, format_results, script=None):
    """A speed script's `main`: one backend's worker, or the driver of all.

    The driver (`drive`) starts `script` again once per backend with
    `--worker-out`; that child runs `run_worker(args)` and exits 0.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker_out:
        run_worker(args)
        return 0
    return drive(args, argv, format_results, script=script)


def main(argv=None):
    return run_script(argv, parse_args, run_worker, format_table)


def _load_average():
    try:
        return "/".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        return "?"


def _strip_flags(argv, flags):
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        name = item.split("=", 1)[0]
        if name in flags:
            skip = "=" not in item
            continue
        out.append(item)
    return out


if __name__ == "__main__":
    sys.exit(main())
