"""How the recipes train and score: settings, schedule, fit, test evaluation.

SGD with momentum and an epoch-wise step schedule (`TrainSettings`) or a
per-grade cosine (`make_optimizer`), plain cross-entropy training
(`fit_plain`), `TestEvaluator`, which times each epoch and scores the model
on the real test split after it, and the devices and precision a run uses
(`distribution_scope`, `precision_policy`).
"""

import contextlib
import dataclasses
import math
import os
import sys
import time

from absl import flags
from absl import logging
import keras
import numpy as np

import keras_edu
from cli import RecipeError
from cli import int_list
from data_loading import fit_inputs


# ---------------------------------------------------------------- flags

VERBOSE_HELP = (
    "Keras verbosity: 1 progress bar, 2 one line per epoch, 0 silent. "
    "Default: 1 when the output is a terminal, 2 otherwise (a CI log, "
    "`> log.txt`)."
)


def default_verbose(stream=None):
    """Keras `verbose` for `fit`: 1 on a terminal, else 2 (one line per epoch).

    Keras redraws its progress bar in place only on a terminal; written to
    a file or a CI log, it prints a new line at every update instead,
    thousands per run.

    Args:
        stream: The output to check (default `sys.stdout`).
    """
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return 1 if isatty is not None and isatty() else 2
    except ValueError:  # A closed stream.
        return 2


def define_training_flags(flag_values, config_names):
    """The flags of the optimisation, shared by the training recipes."""
    flags.DEFINE_enum(
        "config",
        None,
        config_names,
        "A named recipe from recipes/configs.py; it sets the defaults of the "
        "flags it lists (flags given on the command line still win).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "epochs", 6, "Training epochs.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "batch_size", 64, "Batch size.", flag_values=flag_values
    )
    flags.DEFINE_float(
        "lr", 0.05, "Initial learning rate of SGD.", flag_values=flag_values
    )
    flags.DEFINE_float(
        "momentum", 0.9, "SGD momentum.", flag_values=flag_values
    )
    flags.DEFINE_float(
        "weight_decay",
        5e-4,
        "Weight decay of convolution and dense kernels (PyTorch SGD's "
        "coupled `weight_decay`).",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "lr_decay_epochs",
        [],
        "Epochs at which the learning rate is multiplied by "
        "--lr_decay_factor, e.g. `150,180,210`.",
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "lr_decay_factor",
        0.1,
        "Learning-rate factor applied at each of --lr_decay_epochs.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "seed",
        0,
        "Seed of weights, shuffles, subsets and augmentation.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "quick",
        False,
        "A small, fast run: 2,000 training and 1,000 test images, 3 epochs "
        "(grades at epochs 1 and 2), no learning-rate decay. Flags given "
        "on the command line still win.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "overwrite",
        False,
        "Replace output files that already exist.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "verbose",
        None,
        VERBOSE_HELP,
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "compilation_cache",
        "",
        "JAX only: a directory where XLA keeps compiled train steps, so a "
        "later run of the same models (another seed, a resumed run) skips "
        "most of the compilation at its start and at each grade switch "
        "(docs/education.md, 'Grade-switch cost'). Empty: no cache.",
        flag_values=flag_values,
    )


# ------------------------------------------------------------- settings


@dataclasses.dataclass
class TrainSettings:
    """How to optimise: SGD with momentum, an epoch-wise step schedule."""

    epochs: int = 6
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_decay_epochs: tuple = ()
    lr_decay_factor: float = 0.1
    seed: int = 0
    # None: `default_verbose()`, the progress bar on a terminal only.
    verbose: int = None

    def __post_init__(self):
        if self.verbose is None:
            self.verbose = default_verbose()
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < 1
            ):
                raise RecipeError(
                    f"--{name} must be a positive integer. Received: {value!r}."
                )
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise RecipeError(f"--lr must be > 0. Received: {self.lr}.")
        if not 0 <= self.momentum < 1:
            raise RecipeError(
                f"--momentum must be in [0, 1). Received: {self.momentum}."
            )
        if self.weight_decay < 0:
            raise RecipeError(
                f"--weight_decay must be >= 0. Received: {self.weight_decay}."
            )
        self.lr_decay_epochs = tuple(self.lr_decay_epochs)

    def as_dict(self):
        """The settings as a JSON-ready dict (for the results files)."""
        return dataclasses.asdict(self)


def settings_from_flags(flag_values):
    """The `TrainSettings` of the flags of `define_training_flags`."""
    return TrainSettings(
        epochs=flag_values.epochs,
        batch_size=flag_values.batch_size,
        lr=flag_values.lr,
        momentum=flag_values.momentum,
        weight_decay=flag_values.weight_decay,
        lr_decay_epochs=int_list(
            flag_values.lr_decay_epochs, "lr_decay_epochs", minimum=1
        ),
        lr_decay_factor=flag_values.lr_decay_factor,
        seed=flag_values.seed,
        verbose=flag_values.verbose,
    )


def enable_compilation_cache(path):
    """Keeps JAX's compiled executables in `path` (JAX only; "" does nothing).

    On the CPU, XLA compiles the train step of a small CNN in 5-10 s, and
    a graded student pays that again at every grade switch. With the cache
    a later run with the same shapes loads the executables instead.
    Returns whether the cache was enabled.

    Example (with `recipes/` on `sys.path`, before any model is built):

    ```python
    import training

    training.enable_compilation_cache("/tmp/keras_edu_xla")
    ```
    """
    if not path:
        return False
    if keras.backend.backend() != "jax":
        logging.warning(
            "--compilation_cache=%s is ignored: it is for the JAX backend "
            "(this run uses %s).",
            path,
            keras.backend.backend(),
        )
        return False
    import jax

    # JAX fixes the cache folder at the first compile that uses one, so
    # this must run before any model is compiled with another folder set.
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(path))
    return True


# `--lr_schedule` values: see `make_optimizer`.
LR_SCHEDULES = ("per_grade", "step")


def make_optimizer(settings, lr_schedule="step"):
    """SGD with the settings' momentum and learning rate.

    Args:
        settings: A `TrainSettings`.
        lr_schedule: `"step"`: the constant `settings.lr`, which
            `schedule_callbacks` multiplies by `lr_decay_factor` at
            `lr_decay_epochs`. `"per_grade"`: a
            `keras_edu.schedules.PerGradeCosineDecay` peaking at
            `settings.lr`, one cosine per grade of education distillation;
            `keras_edu.GradeCallback` sizes it from the curriculum's steps
            per grade when `fit` starts.
    """
    if lr_schedule not in LR_SCHEDULES:
        raise RecipeError(
            f"--lr_schedule must be one of {', '.join(LR_SCHEDULES)}. "
            f"Received: {lr_schedule!r}."
        )
    rate = settings.lr
    if lr_schedule == "per_grade":
        rate = keras_edu.schedules.PerGradeCosineDecay(settings.lr)
    return keras.optimizers.SGD(learning_rate=rate, momentum=settings.momentum)


def learning_rate_at(settings, epoch):
    """The learning rate of `epoch` (0-based) under the step schedule."""
    decays = sum(epoch >= e for e in settings.lr_decay_epochs)
    return settings.lr * settings.lr_decay_factor**decays


def schedule_callbacks(settings):
    """The learning-rate schedule as a callback, or none.

    Epoch-based rather than a step-based `LearningRateSchedule`: the number
    of steps per epoch changes at each grade of education distillation, and
    the decay must still happen at the same epochs.
    """
    if not settings.lr_decay_epochs:
        return []
    return [
        keras.callbacks.LearningRateScheduler(
            lambda epoch, lr: learning_rate_at(settings, epoch)
        )
    ]


class LearningRateLog(keras.callbacks.Callback):
    """The optimizer's learning rate at the start of each epoch (`rates`).

    List it after the callbacks that set the rate (`LearningRateScheduler`,
    `keras_edu.GradeCallback`), so that it reads the rate of the epoch's
    first step.
    """

    def __init__(self):
        super().__init__()
        self.rates = []

    def on_epoch_begin(self, epoch, logs=None):
        rate = self.model.optimizer.learning_rate
        self.rates.append(float(keras.ops.convert_to_numpy(rate)))


def nan_guard(data, settings):
    """`keras_edu.nonfinite.TerminateOnNaN` over the training inputs.

    It stops at the first non-finite loss and names the term (and, for a
    distiller, the teacher) at fault; `raise_if_stopped_on_nan` then turns
    the stop into a recipe error, so no NaN student is saved or scored.
    """
    return keras_edu.nonfinite.TerminateOnNaN(data=fit_inputs(data, settings)["x"])


def raise_if_stopped_on_nan(guard):
    if guard.message is not None:
        raise RecipeError(f"Training stopped at a non-finite loss. {guard.message}")


# -------------------------------------------------------- fit and score


class EpochTimer(keras.callbacks.Callback):
    """Wall-clock seconds of each training epoch."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(round(time.perf_counter() - self._start, 3))


class TestEvaluator(EpochTimer):
    """Times each epoch, then scores the student on the test split.

    Runs the student in inference mode on the real test split after every
    epoch and records the overall and per-group top-1. A graded student's
    logits cover the classes seen so far; they are mapped back to global
    class ids, so classes not seen yet count as errors. The epoch time is
    taken before the scoring, so it is the training time alone.
    """

    def __init__(self, x, y, groups, batch_size=256):
        super().__init__()
        self.x, self.y = x, y
        self.groups = groups
        self.batch_size = batch_size
        self.top1 = []
        self.per_group = []
        self.grades = []
        self.losses = []

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        loss = (logs or {}).get("loss")
        self.losses.append(None if loss is None else float(loss))
        top1, per_group = self.score(self.model)
        self.top1.append(top1)
        self.per_group.append(per_group)
        self.grades.append(getattr(self.model, "grade", None))
        if logs is not None:
            logs["test_top1"] = top1

    def score(self, model):
        """Overall and per-group test top-1 of `model` (or its student)."""
        student = getattr(model, "student", model)
        logits = student.predict(self.x, batch_size=self.batch_size, verbose=0)
        predicted = np.argmax(logits, axis=-1)
        graded = getattr(model, "graded_student", None)
        if graded is not None:
            predicted = np.asarray(graded.classes_for_grade(model.grade))[
                predicted
            ]
        return top1_scores(predicted, self.y, self.groups)


def top1_scores(predicted, labels, groups):
    """Overall top-1 and the top-1 of each group (`None` when it is empty)."""
    correct = predicted == labels
    per_group = []
    for group in groups:
        members = np.isin(labels, group)
        per_group.append(
            float(correct[members].mean()) if members.any() else None
        )
    return float(correct.mean()), per_group


# ------------------------------------------------- devices and precision

# `--distribution` and `--mixed_precision` values.
DISTRIBUTIONS = ("none", "data_parallel")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def check_distribution(name):
    """Refuses a `--distribution` this backend cannot run, before any work."""
    if name not in DISTRIBUTIONS:
        raise RecipeError(
            f"--distribution must be one of {', '.join(DISTRIBUTIONS)}. "
            f"Received: {name!r}."
        )
    if name == "data_parallel" and keras.backend.backend() == "torch":
        raise RecipeError(
            "--distribution=data_parallel needs the JAX or TensorFlow "
            "backend: Keras' PyTorch trainer has no multi-device `fit` (it "
            "would train on one device and ignore the distribution, and "
            "keras_edu.Distiller refuses it). Run with KERAS_BACKEND=jax "
            "(keras.distribution.DataParallel) or KERAS_BACKEND=tensorflow "
            "(tf.distribute.MirroredStrategy), or pass --distribution=none."
        )


@contextlib.contextmanager
def distribution_scope(name, graded=False):
    """Builds, compiles and fits the models inside it on every local device.

    `"none"` changes nothing. `"data_parallel"`: on JAX a
    `keras.distribution.DataParallel` over every device (the batch is
    split across them, the variables replicated); on TensorFlow a
    `tf.distribute.MirroredStrategy` scope. One device is a 1-device mesh
    or a 1-replica strategy. The previous distribution is restored on exit.

    Args:
        name: One of `DISTRIBUTIONS`.
        graded: Whether the run trains a graded student (`ed`, `ed_amtml`),
            which keras_edu cannot train under several TensorFlow replicas.

    Yields:
        The number of devices (replicas) the batch is split over.
    """
    check_distribution(name)
    if name == "none":
        yield 1
    elif keras.backend.backend() == "jax":
        distribution = keras.distribution.DataParallel()
        with distribution.scope():
            yield int(distribution.device_mesh.devices.size)
    else:
        import tensorflow as tf

        strategy = tf.distribute.MirroredStrategy()
        replicas = strategy.num_replicas_in_sync
        if graded and replicas > 1:
            # keras_edu.Distiller.fit refuses it too; say so before the
            # teachers are loaded, in terms of the flags.
            raise RecipeError(
                "--distribution=data_parallel with --method=ed or ed_amtml on "
                "TensorFlow: keras_edu does not train a graded "
                f"student under a MirroredStrategy of {replicas} replicas "
                "(each replica would get a slice of the curriculum's batch, "
                "laid out per class group; docs/distributed.md). Run with "
                "KERAS_BACKEND=jax, or pass --distribution=none."
            )
        with strategy.scope():
            yield replicas


@contextlib.contextmanager
def precision_policy(name):
    """Sets Keras' global dtype policy inside it, and restores the old one.

    Models built inside compute in `name`'s dtype (their variables stay
    float32 under the mixed policies); teachers loaded from `.keras` files
    keep the policy they were saved with (docs/guides/mixed_precision.md).
    """
    if name not in PRECISIONS:
        raise RecipeError(
            f"--mixed_precision must be one of {', '.join(PRECISIONS)}. "
            f"Received: {name!r}."
        )
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def fit_plain(model, data, settings, source=None, arrays=None, callbacks=()):
    """Trains a plain classifier with cross-entropy; returns the epoch times."""
    keras.utils.set_random_seed(settings.seed)
    model.compile(
        optimizer=make_optimizer(settings),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    timer = EpochTimer()
    guard = keras_edu.nonfinite.TerminateOnNaN()
    model.fit(
        epochs=settings.epochs,
        verbose=settings.verbose,
        callbacks=[timer, guard, *schedule_callbacks(settings), *callbacks],
        **fit_inputs(data, settings, source, arrays),
    )
    raise_if_stopped_on_nan(guard)
    return timer.seconds
