"""Compiling the next grade's train step while the current grade trains (JAX).

A grade switch rebuilds the student, so Keras traces and XLA compiles a new
train step: 5-10 s on a CPU for a ResNet-8 (docs/benchmarks.md), paid in the
first epoch of every grade. `NextGradeCompile` does that work ahead of time,
in a background thread, for a shadow `Distiller` that is already at the next
grade. The shadow shares the student's layers and the teachers with the real
distiller and has an optimizer and metrics of the same structure, so its
step is the same XLA program over the same state layout. XLA compiles
without the Python lock, so the compile runs on a free core (or beside an
accelerator) while training goes on.

At the switch the compiled step replaces the one Keras would compile, but
only when the state layout matches exactly (the same variables, in the
same order); otherwise, or if anything in the background failed, Keras
compiles as usual. The results are the same either way (tested to the
bit): only the time the compile takes moves.

This path is JAX-specific by design: TensorFlow and PyTorch trace their
steps differently (`GradeCallback(precompile=...)` says so).
"""

import logging
import threading

import keras
import numpy as np

logger = logging.getLogger("keras_edu")


def supported(distiller):
    """Whether the next grade's step can be compiled ahead for `distiller`."""
    if keras.backend.backend() != "jax":
        return False
    if distiller.run_eagerly or not distiller.jit_compile:
        return False
    # Keras builds sharded or NNX steps differently; leave those to it.
    from keras.src.backend.config import is_nnx_enabled
    from keras.src.distribution import distribution_lib

    if distribution_lib.distribution() is not None or is_nnx_enabled():
        return False
    # AMTML makes fresh, randomly initialised layers at each switch: a
    # shadow would draw them from the same random stream as the real one
    # (changing its initial values) and could not share them anyway.
    return distiller._amtml is None


class NextGradeCompile:
    """The train step of grade `grade`, compiled in a background thread.

    Create it at the start of an epoch (the variables still hold values
    then: Keras' JAX `fit` moves them into its own state once the first
    batch runs); `install` it right after `Distiller.set_grade(grade)`.

    Args:
        distiller: The `keras_edu.Distiller` being trained, compiled.
        grade: The grade whose step to compile (1-based).
        data: The `keras_edu.CurriculumDataset` the distiller trains on.
    """

    def __init__(self, distiller, grade, data):
        self.grade = grade
        self._compiled = None
        self._error = None
        # Serialising the optimizer reads its learning rate, so the config
        # is taken now, before Keras moves variable values into its state.
        compile_config = distiller.get_compile_config()
        # Build the next grade's student here, in the caller's thread: its
        # new blocks draw their initial weights from the global random
        # state, exactly as at the switch itself.
        distiller.graded_student.model_for_grade(grade)
        self._thread = threading.Thread(
            target=self._run,
            args=(distiller, compile_config, data),
            name=f"keras_edu_compile_grade{grade}",
            daemon=True,
        )
        self._thread.start()

    def _run(self, distiller, compile_config, data):
        try:
            shadow, state, batch = _shadow_at(distiller, self.grade, compile_config, data)
            import jax

            # As Keras' JAX trainer jits its train step: donate the state.
            step = jax.jit(shadow.train_step, donate_argnums=0)
            self._compiled = step.lower(state, batch).compile()
            self._shadow = shadow
        except Exception as error:  # Never fail training over an optimisation.
            self._error = error

    def wait(self):
        """Blocks until the background compile has finished."""
        self._thread.join()

    def install(self, distiller):
        """Makes the compiled step `distiller`'s train step; returns success.

        Waits for the compile. Installs nothing, and returns False, when
        the compile failed or the distiller's state layout differs from
        the one compiled for.
        """
        self.wait()
        if self._error is not None:
            logger.warning(
                "Compiling grade %d's train step ahead failed (%s: %s); Keras "
                "compiles it at the first step instead.",
                self.grade,
                type(self._error).__name__,
                self._error,
            )
            return False
        shadow, self._shadow = self._shadow, None
        if distiller.grade != self.grade or not _same_state_layout(distiller, shadow):
            logger.info(
                "Grade %d's state layout differs from the one compiled ahead; "
                "Keras compiles its train step at the first step instead.",
                self.grade,
            )
            return False
        compiled = self._compiled
        # Keras' own step, for batches of another shape or dtype than the
        # compiled one (it compiles for them on first use).
        fallback = _jitted_train_step(distiller)

        def train_step(state, data):
            try:
                return compiled(state, data)
            except TypeError:
                return fallback(state, data)

        # `_make_function` adds Keras' iterator handling around the step.
        distiller.train_function = distiller._make_function(train_step)
        return True


def _jitted_train_step(distiller):
    import jax

    return jax.jit(distiller.train_step, donate_argnums=0)


def _shadow_at(distiller, grade, compile_config, data):
    """A Distiller at `grade` that shares the student's layers and teachers.

    Returns it with the abstract (shape and dtype) train state and batch
    its step runs on.
    """
    import jax

    from keras_edu.distiller import Distiller

    shadow = Distiller(
        distiller.graded_student,
        distiller.teachers,
        alpha=distiller.alpha,
        temperature=distiller.temperature,
        loss=distiller.distillation_term,
        grade=distiller.grade,
        generalists_teach=distiller.generalists_teach,
        specialists_until_grade=distiller.specialists_until_grade,
    )
    # The same path as the real switch, so variables are tracked in the
    # same order.
    shadow.set_grade(grade)
    # As `keras.saving.load_model` restores it; builds the optimizer too.
    shadow.compile_from_config(compile_config)
    shadow._blocks = data.block_sizes(grade)
    (x_shape, x_dtype), (y_shape, y_dtype) = data.batch_spec()
    batch = (jax.ShapeDtypeStruct(x_shape, x_dtype), jax.ShapeDtypeStruct(y_shape, y_dtype))
    _build_compile_metrics(shadow, batch)
    state = tuple(
        [_abstract(v) for v in variables] for variables in _state_variables(shadow)
    )
    return shadow, state, batch


def _build_compile_metrics(shadow, batch):
    # What `Model._symbolic_build` does for the metrics, from shapes alone:
    # that would call the student, whose variables Keras has emptied into
    # its train state by now.
    metrics = shadow._compile_metrics
    if metrics is None or metrics.built:
        return
    labels = keras.KerasTensor(batch[1].shape, dtype=batch[1].dtype)
    logits = keras.KerasTensor(
        (batch[1].shape[0], shadow.student.output_shape[-1]), dtype="float32"
    )
    metrics.build(labels, logits)


def _state_variables(model):
    # The order of Keras' JAX train state: trainable, non-trainable,
    # optimizer, metrics variables.
    return (
        model.trainable_variables,
        model.non_trainable_variables,
        model.optimizer.variables,
        model.metrics_variables,
    )


def _abstract(variable):
    import jax

    return jax.ShapeDtypeStruct(tuple(variable.shape), np.dtype(variable.dtype))


def _same_state_layout(distiller, shadow):
    """True when both train states hold the same variables in the same order.

    The student's and teachers' variables are shared, so they must be the
    very same objects; the optimizer's and metrics' are each model's own,
    so they must match in path, shape and dtype.
    """
    mine, theirs = _state_variables(distiller), _state_variables(shadow)
    for index, (a, b) in enumerate(zip(mine, theirs)):
        if len(a) != len(b):
            return False
        if index < 2:
            if any(u is not v for u, v in zip(a, b)):
                return False
        elif any(
            u.path != v.path or _abstract(u) != _abstract(v) for u, v in zip(a, b)
        ):
            return False
    return True
