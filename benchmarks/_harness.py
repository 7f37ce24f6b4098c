"""The shared harness of the speed benchmarks (`benchmarks/*_speed.py`).

A speed benchmark is one script that is both the driver and the worker:

* **Runtime flags.** `speed_parser(doc)` / `add_runtime_arguments(parser)`
  give every benchmark the same `--backends`, `--jit-compile`, `--threads`,
  `--tune-malloc`, `--seed`, `--json` and `--timeout` flags (and the
  internal `--worker-out`); `split_list` checks comma-separated choices.
* **One worker subprocess per backend.** `run_script` is a benchmark's
  `main`: without `--worker-out` it is the driver (`drive`), which starts the
  benchmark's own script again once per backend (`run_backend`:
  `KERAS_BACKEND` set before Keras is imported, the driver-only flags
  stripped, `--worker-out PATH` added). The child runs the benchmark's
  `run_worker(args)`, which writes its result to `PATH` as JSON. Workers
  import the keras_edu of the checkout the script lives in (the repository
  root is appended to `PYTHONPATH`, so a copy put on `PYTHONPATH` first
  wins); `worker_info()` records which one, and the versions.
* **Pinned threads and malloc.** The workers' environment caps every
  backend's intra-op threads (`--threads`, default 1: `_thread_env`), and
  with `--tune-malloc` tells glibc malloc to keep freed memory
  (`TUNED_MALLOC_ENV`); `configure_worker` applies `--threads` to torch
  inside the worker and returns the `jit_compile` to compile with.
* **Epoch timing rows.** `epoch_timer()` is a callback recording each
  epoch's (or predict pass's) wall time, process CPU time and minor page
  faults; `fit_epoch_row` makes a row out of a compiled model; `run_rounds`
  warms every row up, then times them interleaved, one epoch of every row
  per round, in an order rotated by one row per round.
* **Tables.** The driver prints `format_results(results, args)`, which each
  benchmark writes itself (its rows, ratios of the medians and targets),
  starting each backend's block with `backend_line(result)`; a backend whose
  worker failed comes back as `{"backend", "error"}`. `--json` writes the
  configuration and every backend's result.

benchmarks/ is no package: a benchmark imports this module with

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _harness as harness

which works for the driver and for its workers (the same script, re-run).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ALL_BACKENDS = ("tensorflow", "jax", "torch")
# glibc: no mmap for blocks up to 32 MiB (its maximum) and never trim the
# heap, instead of its dynamic thresholds.
TUNED_MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(32 * 1024 * 1024),
    "MALLOC_TRIM_THRESHOLD_": str(2**40),
}

# ---------------------------------------------------------------------------
# Flags.
# ---------------------------------------------------------------------------


def speed_parser(doc):
    """An `ArgumentParser` described by `doc`'s first paragraph, with the
    runtime flags (`add_runtime_arguments`) already added."""
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_runtime_arguments(parser)
    return parser


def add_runtime_arguments(parser):
    """The flags every speed benchmark shares: backends, threads, malloc, output."""
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


def split_list(text, allowed, flag):
    """The comma-separated items of `text`; exits if one is not in `allowed`."""
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        raise SystemExit(f"{flag}: unknown {bad}; choose from {allowed}.")
    return items


# ---------------------------------------------------------------------------
# Worker side: one backend, inside its own process.
# ---------------------------------------------------------------------------


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


def _backend_version(backend):
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
    try:
        return __import__(module[backend]).__version__
    except (ImportError, AttributeError):  # pragma: no cover - informational
        return "?"


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
    and `.faults`; `.reset()` forgets them (after warm-up).

    Pinned to one core with single-threaded kernels, a worker's CPU time is
    the wall time it would take on an idle core: the wall time also counts
    the time it waited for a shared core.
    """
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
    names = list(names)
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


def load_average():
    """The 1, 5 and 15-minute load averages as `"a/b/c"` (`"?"` if unknown)."""
    try:
        return "/".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        return "?"


# ---------------------------------------------------------------------------
# Driver side: one subprocess per backend, then the table.
# ---------------------------------------------------------------------------


def run_backend(backend, args, argv, script):
    """Runs `script` (a speed benchmark's file) as a worker for `backend`.

    The worker gets `argv` plus `--worker-out PATH` and must write its
    result there as JSON; returns that result, or `{"backend", "error"}`.
    """
    script = os.path.abspath(script)
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


def _strip_flags(argv, flags):
    """`argv` without `flags` and their values (`--flag value` or `--flag=value`)."""
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


def backend_line(result):
    """`[backend version] keras ..., keras_edu from ... (time, load)`."""
    return (
        f"[{result['backend']} {result['backend_version']}] keras "
        f"{result['keras']}, keras_edu from {result['keras_edu_path']} "
        f"({result['process_seconds']:.0f}s, load average "
        f"{' -> '.join(result['load_average'])})"
    )


def drive(args, argv, format_results, script):
    """The driver: one worker subprocess of `script` per backend, the table,
    the JSON.

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


def run_script(argv, parse_args, run_worker, format_results, script):
    """A speed script's `main`: one backend's worker, or the driver of all.

    `script` is the benchmark's own file (pass `__file__`): the driver
    (`drive`) starts it again once per backend with `--worker-out`; that
    child runs `run_worker(args)` and exits 0.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker_out:
        run_worker(args)
        return 0
    return drive(args, argv, format_results, script)
