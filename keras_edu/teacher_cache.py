"""Teacher outputs computed once per training sample and fed with the batch.

A frozen teacher runs in inference mode (`keras_edu.Teacher` calls its model
with `training=False`), so on un-augmented arrays its outputs are a function
of the sample alone: the same on every epoch. `Distiller(...,
cache_teachers=True)` computes them once before training, attaches them to
the training inputs as `{"inputs": x, "teacher_outputs": {...}}`, and the
training step reads them instead of running the teachers. Everything that
slices or shuffles a batch (Keras' data adapters, `CurriculumDataset`, the
Distiller's per-group blocks) then carries each sample's teacher outputs
with it, so the cache is indexed by sample, not by step.

This module is the one place that knows that layout.
"""

import os
import time

import keras
import numpy as np

from keras_edu.routing import samples_each_teacher_teaches

INPUTS = "inputs"
TEACHER_OUTPUTS = "teacher_outputs"
# Examples per teacher pass while the cache is filled.
FILL_BATCH_SIZE = 256


def check_cache_setting(value):
    """Validates `cache_teachers`: False, True (in memory) or a directory."""
    if isinstance(value, bool) or (isinstance(value, str) and value):
        return value
    raise ValueError(
        "`cache_teachers` must be False, True (keep the teachers' outputs in "
        "memory) or a directory path (keep them in NumPy memmaps there, for "
        f"data that does not fit in memory). Received: cache_teachers={value!r}."
    )


def check_cacheable(x):
    """Refuses training inputs whose samples have no fixed identity.

    The cache holds one row per sample of `x`. A `tf.data.Dataset`, a
    `PyDataset` or a generator may give other samples each epoch (random
    crops, flips, mixing), and its samples cannot be indexed, so the
    cached outputs would be the outputs of other images.
    """
    if isinstance(x, np.ndarray):
        return
    raise ValueError(
        "`cache_teachers` needs the training inputs `x` as a NumPy array, one "
        "row per sample: the cache keeps each teacher's outputs per sample. "
        f"Received x of type {type(x).__name__}. A dataset, PyDataset or "
        "generator may change its samples every epoch (data augmentation), "
        "which would make cached teacher outputs wrong. Pass the "
        "un-augmented arrays, or build the Distiller with "
        "`cache_teachers=False` to run the teachers on every batch."
    )


def fill(forwards, x, directory=None, batch_size=FILL_BATCH_SIZE, rows=None):
    """Runs each teacher over `x` once and keeps what it returns.

    Args:
        forwards: One callable per teacher, mapping a batch of inputs to a
            structure (dict) of float32 NumPy arrays with the batch on the
            first axis.
        x: The training inputs, a NumPy array.
        directory: None to keep the outputs in memory, or a directory in
            which each output becomes a `.npy` memmap.
        batch_size: Examples per teacher pass.
        rows: None (every teacher on every sample), or one entry per
            teacher: None, or the sorted indices of the samples it runs on.
            The other samples' outputs are zeros (see
            `keras_edu.routing.samples_each_teacher_teaches`).

    Returns:
        `(outputs, seconds)`: a list with one structure of `(len(x), ...)`
        arrays per teacher, and the wall time the passes took.
    """
    start = time.perf_counter()
    if directory is not None:
        os.makedirs(directory, exist_ok=True)
    outputs = []
    for k, forward in enumerate(forwards):
        wanted = None if rows is None else rows[k]
        indices = np.arange(len(x)) if wanted is None else np.asarray(wanted)
        # A teacher that teaches no sample still runs once, on one sample,
        # to learn the shapes of what it returns.
        probe = indices if len(indices) else np.arange(min(1, len(x)))
        structure, stores = None, None
        for begin in range(0, len(probe), batch_size):
            chunk = probe[begin : begin + batch_size]
            output = forward(x[chunk])
            batch = keras.tree.flatten_with_path(output)
            if stores is None:
                structure = output
                stores = [
                    _allocate(directory, k, path, (len(x),) + a.shape[1:], a.dtype)
                    for path, a in batch
                ]
            if len(indices):
                for store, (_, array) in zip(stores, batch):
                    store[chunk] = array
        outputs.append(keras.tree.pack_sequence_as(structure, stores))
    return outputs, time.perf_counter() - start


def attach_for_fit(distiller, x, y):
    """`x` with each sample's outputs of `distiller`'s teachers, computed now.

    Each teacher runs on the samples it teaches at some grade of the
    distiller's routing plans, unless the distillation term reads every row
    of a branch (a batch scalar, such as AMTML's relational terms). Sets
    `distiller.teacher_cache_seconds` and `teacher_cache_examples` (the
    samples each teacher ran on).
    """
    check_cacheable(x)
    num_teachers = len(distiller.teachers)
    rows = [None] * num_teachers  # None: every sample
    wiring = distiller._wiring
    if wiring.cache_taught_rows_only and isinstance(y, (np.ndarray, list)):
        graded = distiller.graded_student
        grades = [None] if graded is None else range(1, graded.num_grades + 1)
        plans = [distiller.routing_plan(g) for g in grades]
        rows = samples_each_teacher_teaches(plans, y, num_teachers)
    setting = distiller.cache_teachers
    outputs, distiller.teacher_cache_seconds = fill(
        [wiring.cache_forward(k) for k in range(num_teachers)],
        x,
        None if setting is True else setting,
        rows=rows,
    )
    distiller.teacher_cache_examples = [len(x) if r is None else len(r) for r in rows]
    return attach(x, outputs)


def attach(x, outputs):
    """The training inputs with each sample's cached teacher outputs."""
    # A dict, not a list: Keras' PyDataset adapter on TensorFlow cannot
    # give a list inside a batch a type spec.
    return {
        INPUTS: x,
        TEACHER_OUTPUTS: {_key(k): o for k, o in enumerate(outputs)},
    }


def is_attached(x):
    return isinstance(x, dict) and TEACHER_OUTPUTS in x


def inputs_of(x):
    """The student's inputs of a batch, with or without cached outputs."""
    return x[INPUTS] if is_attached(x) else x


def outputs_of(x, k):
    """Teacher k's cached outputs in a batch (a dict), None when not cached."""
    return x[TEACHER_OUTPUTS][_key(k)] if is_attached(x) else None


def _key(k):
    return f"teacher_{k}"


def _allocate(directory, k, path, shape, dtype):
    # Zeros: the rows a teacher skips (`fill(rows=...)`) must be finite.
    if directory is None:
        return np.zeros(shape, dtype)
    name = "_".join(["teacher", str(k)] + [str(p) for p in path]) + ".npy"
    return np.lib.format.open_memmap(
        os.path.join(directory, name), mode="w+", dtype=dtype, shape=shape
    )
