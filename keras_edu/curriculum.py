"""`CurriculumDataset`: homogeneous-group batches of the classes seen so far."""

import contextlib
import math

import keras
import numpy as np

from keras_edu import _keras_internals
from keras_edu import teacher_cache
from keras_edu.partition import ClassPartition
from keras_edu.utils import check_integer
from keras_edu.utils import check_positive

ORDERS = ("interleaved", "sequential", "stratified")
# Chosen by measured accuracy: docs/results.md and docs/education.md
# ("Curriculum data").
DEFAULT_ORDER = "stratified"


class CurriculumDataset(keras.utils.PyDataset):
    """Batches of the samples of groups `1..grade` only.

    Grade `g` of education distillation trains on the samples of groups
    `1..g` (earlier groups are replayed). Samples of later groups are never
    read, so they cost nothing. With the `"interleaved"` and `"sequential"`
    orders every batch holds samples of a single group, so each training
    step runs only that group's teacher. With `"stratified"` every batch
    holds each seen group in proportion to its size, in contiguous blocks
    (group 1's rows first); each specialist then runs on its own block only,
    so a step costs one teacher pass over the batch all the same, and the
    student's BatchNorm layers see batches that look like the test set.

    `keras_edu.Distiller.fit` builds one for you from arrays or a
    `tf.data.Dataset` when the student is a `GradedStudent`; build one
    yourself to control it.

    Args:
        x: Inputs: a NumPy array, or an unbatched `tf.data.Dataset` of
            `(input, label)` pairs (then `y` must be None).
        y: Integer class ids (global), shape `(N,)` or `(N, 1)`, or one-hot
            `(N, num_classes)`; with arrays only.
        partition: The `keras_edu.ClassPartition` of the curriculum.
        batch_size: Samples per batch. Defaults to 32.
        order: `"stratified"` (default): every batch holds all seen groups
            in fixed proportions, see above.
            `"interleaved"`: the homogeneous batches of all seen groups in a
            random order each epoch. `"sequential"`: all batches of group 1,
            then group 2, ..., as the reference code does. See
            docs/education.md for the measured accuracy of each. In every
            order every batch is full: a group's last batch is completed
            with samples of a fresh pass over that group. One batch shape
            means one compiled train step per grade on JAX and TensorFlow,
            where a short last batch per group would compile one more each.
        shuffle: Shuffle samples within each group every epoch (arrays).
        seed: Seed of the shuffles.
        grade: The grade to start at (1-based).
        num_processes: Processes that feed one data-parallel run together
            (JAX multi-process, `keras.distribution.initialize`). Each
            process builds the same global batches of `batch_size` rows
            (same data, same `seed`, which is then required) and serves its
            `batch_size // num_processes` contiguous rows of each, so the
            global batch keeps its per-group layout. `Distiller.fit` sets
            it from JAX's process count. Defaults to 1.
        process_index: This process's index in `[0, num_processes)`.
        replay_weight: Loss weight of a sample of a group seen at an
            earlier grade, relative to one of the grade's new group.
            Defaults to 1.0: every sample weighs the same and batches are
            `(x, y)` pairs. Otherwise batches are `(x, y, sample_weight)`
            with the weights scaled so that their mean over the grade's
            samples is 1 (the learning rate keeps its meaning); they also
            weigh the training metrics. `GradeCallback(replay_weight=...)`
            sets it. Measured in docs/results.md ("Replay weight").

    Example:

    ```python
    import numpy as np
    import keras_edu

    x = np.random.rand(90, 8).astype("float32")
    y = np.repeat(np.arange(9), 10)
    partition = keras_edu.ClassPartition.contiguous(9, "1:1:1")
    data = keras_edu.CurriculumDataset(x, y, partition=partition, batch_size=8)
    len(data)  # 4 batches: the 30 samples of group 1
    data.set_grade(3)
    len(data)  # 12 batches: 4 per group
    ```
    """

    def __init__(
        self,
        x,
        y=None,
        *,
        partition,
        batch_size=32,
        order=DEFAULT_ORDER,
        shuffle=True,
        seed=None,
        grade=1,
        num_processes=1,
        process_index=0,
        replay_weight=1.0,
    ):
        super().__init__()
        if not isinstance(partition, ClassPartition):
            raise ValueError(
                "`partition` must be a `keras_edu.ClassPartition`. Received: "
                f"partition={partition!r}."
            )
        if order not in ORDERS:
            raise ValueError(
                f"`order` must be one of {ORDERS}. Received: order={order!r}."
            )
        batch_size = check_integer(batch_size, "batch_size")
        self.num_processes, self.process_index = _check_process_share(
            num_processes, process_index, batch_size, seed
        )
        self.partition = partition
        self.batch_size = batch_size
        self.order = order
        self.shuffle = shuffle
        self.replay_weight = check_positive(replay_weight, "replay_weight")
        self._rng = np.random.default_rng(seed)
        self._source = _make_source(x, y, partition, batch_size, self._rng)
        self.grade = grade
        if order == "stratified":
            # Fail now, not at the last grade's boundary hours into `fit`.
            _proportional_split(batch_size, self._source.counts)
        self._plan = self._make_plan()
        # Weak references to the epoch iterators of the running `fit`.
        self._epoch_iterators = []

    @property
    def num_batches(self):
        return self.steps_for_grade(self.grade)

    def steps_for_grade(self, grade):
        """Batches in one epoch of `grade` (1-based), without switching to it."""
        self.partition._check_grade(grade)
        if self.order == "stratified":
            return math.ceil(sum(self._source.counts[:grade]) / self.batch_size)
        return sum(self._source.num_batches[:grade])

    def block_sizes(self, grade=None):
        """Rows of each seen group in a batch (`"stratified"`), else None.

        The blocks are contiguous and in group order: group 1's rows first.
        `grade` defaults to the current grade.
        """
        if self.order != "stratified":
            return None
        grade = self.grade if grade is None else grade
        return _proportional_split(self.batch_size, self._source.counts[:grade])

    def seen_group_inputs(self, num_samples):
        """About `num_samples` training inputs of the seen groups, as batches.

        Each batch holds every seen group in proportion to its size (the
        stratified layout, whatever `order` is), drawn from the start of
        this epoch's order; `GradeCallback(batchnorm_samples=...)` uses them
        to re-estimate BatchNorm statistics at a switch. For a `tf.data`
        source the reads advance the groups' streams.
        """
        sizes = _proportional_split(self.batch_size, self._source.counts[: self.grade])
        count = min(
            math.ceil(num_samples / self.batch_size), self.steps_for_grade(self.grade)
        )
        batches = []
        for index in range(count):
            batch = _concatenate_rows(
                [
                    teacher_cache.inputs_of(
                        self._source.rows(group, index * size, size)[0]
                    )
                    for group, size in enumerate(sizes)
                    if size
                ]
            )
            # A group's rows of this epoch can run out before `count`
            # batches (batch-per-group orders): keep full batches only.
            if len(batch) == self.batch_size:
                batches.append(batch)
        return batches

    def batch_spec(self):
        """`((shape, dtype), (shape, dtype))` of a batch's inputs and labels.

        With a `replay_weight` other than 1, a third pair for the weights.

        Every batch of every grade is full, so one spec holds for all of
        them. Read without drawing a batch (that would move the streams).

        Example:

        ```python
        import numpy as np
        import keras_edu

        partition = keras_edu.ClassPartition.contiguous(6, "1:1:1")
        x = np.zeros((60, 8, 8, 1), "float32")
        data = keras_edu.CurriculumDataset(
            x, np.repeat(np.arange(6), 10), partition=partition, batch_size=4
        )
        data.batch_spec()  # (((4, 8, 8, 1), float32), ((4,), int32))
        ```
        """
        shape, dtype = self._source.input_spec()
        spec = ((self.batch_size,) + shape, dtype), ((self.batch_size,), np.dtype("int32"))
        if self.replay_weight != 1.0:
            spec += (((self.batch_size,), np.dtype("float32")),)
        return spec

    def __len__(self):
        return self.num_batches

    def set_grade(self, grade):
        """Serve the groups `1..grade` from the next epoch on."""
        self.partition._check_grade(grade)
        if grade == self.grade:
            return
        self.grade = grade
        self._plan = self._make_plan()
        _keras_internals.refresh_batch_counts(self._epoch_iterators, self.num_batches)

    @contextlib.contextmanager
    def served_by_fit(self):
        """The block in which a `fit()` trains on this dataset.

        Keras reads a PyDataset's length once, when `fit` starts; inside
        this block `set_grade` also resizes the epochs of that `fit`, so a
        grade switch between epochs takes effect at once. `Distiller.fit`
        opens it; open it around your own `model.fit(curriculum)` if you
        switch grades in a callback.
        """
        with _keras_internals.epoch_iterators_over(self) as iterators:
            self._epoch_iterators = iterators
            try:
                yield self
            finally:
                self._epoch_iterators = []

    def samples_per_group(self):
        """Number of training samples of each group (all groups)."""
        return [int(n) for n in self._source.counts]

    def batches_per_group(self):
        """Number of batches of each group in one epoch."""
        return list(self._source.num_batches)

    def on_epoch_begin(self):
        self._plan = self._make_plan()

    def __getitem__(self, index):
        if self.order == "stratified":
            blocks = [
                self._source.rows(group, index * size, size)
                for group, size in enumerate(self.block_sizes())
                if size
            ]
            batch = (
                _concatenate_rows([x for x, _ in blocks]),
                np.concatenate([y for _, y in blocks]),
            )
        else:
            group, batch = self._plan[index]
            batch = self._source.rows(group, batch * self.batch_size, self.batch_size)
        if self.replay_weight != 1.0:
            batch = (*batch, self.replay_sample_weights(batch[1]))
        return self._process_share(batch)

    def replay_sample_weights(self, labels):
        """The `sample_weight` of samples with class ids `labels` at this grade.

        `replay_weight` for groups seen at earlier grades, 1 for the newest
        group, all scaled so the mean over the grade's samples is 1. At
        grade 1 every weight is 1.
        """
        counts = self._source.counts[: self.grade]
        replayed = sum(counts[:-1])
        scale = sum(counts) / (replayed * self.replay_weight + counts[-1])
        earlier = self.partition.group_of(np.asarray(labels)) < self.grade - 1
        return np.where(earlier, self.replay_weight * scale, scale).astype("float32")

    def _process_share(self, batch):
        # Each process feeds its contiguous slice of the global batch, in
        # process order, so the slices put together are the global batch
        # with its per-group blocks where a single process has them.
        if self.num_processes == 1:
            return batch
        size = self.batch_size // self.num_processes
        start = self.process_index * size
        return keras.tree.map_structure(lambda a: a[start : start + size], batch)

    def _make_plan(self):
        """One `(group, batch index)` entry per step of the coming epoch."""
        self._source.start_epoch(self.shuffle)
        if self.order == "stratified":
            sizes = self.block_sizes()
            self._source.plan_streams([size * self.num_batches for size in sizes])
            return None
        self._source.plan_streams(
            [n * self.batch_size for n in self._source.num_batches[: self.grade]]
        )
        plan = [
            (group, batch)
            for group in range(self.grade)
            for batch in range(self._source.num_batches[group])
        ]
        if self.order == "interleaved":
            permutation = self._rng.permutation(len(plan))
            plan = [plan[i] for i in permutation]
        return plan


class _ArraySource:
    """Per-group sample indices of in-memory arrays."""

    def __init__(self, x, y, partition, batch_size, rng):
        labels = _sparse_labels(y)
        # `x` may be a structure of arrays (inputs with cached teacher
        # outputs, `keras_edu.teacher_cache`), sliced together.
        num_inputs = len(keras.tree.flatten(x)[0])
        if len(labels) != num_inputs:
            raise ValueError(
                f"`x` and `y` must hold the same number of samples. Received "
                f"{num_inputs} inputs and {len(labels)} labels."
            )
        _check_label_range(labels, partition)
        self.x, self.labels = x, labels.astype("int32")
        groups = partition.group_of(self.labels)
        self.indices = [np.flatnonzero(groups == k) for k in range(partition.num_groups)]
        self.batch_size = batch_size
        self.rng = rng
        self.counts = [len(i) for i in self.indices]
        self.num_batches = [math.ceil(c / batch_size) for c in self.counts]
        self._order = [i.copy() for i in self.indices]
        self._shuffle = True

    def input_spec(self):
        """Shape (without the batch axis) and dtype of one input."""
        x = self.x["inputs"] if isinstance(self.x, dict) else self.x
        return tuple(x.shape[1:]), np.dtype(x.dtype)

    def start_epoch(self, shuffle):
        self._shuffle = shuffle
        self._order = [
            self.rng.permutation(i) if shuffle else i.copy() for i in self.indices
        ]

    def plan_streams(self, rows_needed):
        # Group k serves `rows_needed[k]` rows this epoch; a group that runs
        # out before the epoch ends starts a fresh pass over its samples.
        for group, needed in enumerate(rows_needed):
            stream = [self._order[group]]
            while sum(len(s) for s in stream) < needed and len(self.indices[group]):
                indices = self.indices[group]
                stream.append(self.rng.permutation(indices) if self._shuffle else indices)
            self._order[group] = np.concatenate(stream)

    def rows(self, group, start, size):
        rows = self._order[group][start : start + size]
        return keras.tree.map_structure(lambda a: a[rows], self.x), self.labels[rows]


class _TFDataSource:
    """Per-group filtered views of an unbatched `tf.data.Dataset`."""

    def __init__(self, dataset, partition, batch_size, rng):
        import tensorflow as tf

        labels = np.concatenate(
            [np.reshape(b, (-1,)) for b in dataset.map(lambda x, y: y).batch(4096).as_numpy_iterator()]
        ).astype("int64")
        _check_label_range(labels, partition)
        counts = np.bincount(partition.group_of(labels), minlength=partition.num_groups)
        self.counts = [int(c) for c in counts]
        self.num_batches = [math.ceil(c / batch_size) for c in counts]
        table = tf.constant(partition.group_of(np.arange(partition.num_classes)), tf.int32)
        seed = int(rng.integers(2**31))
        self._datasets = []
        for k in range(partition.num_groups):
            group = dataset.filter(
                lambda x, y, k=k: tf.gather(table, tf.cast(tf.reshape(y, ()), tf.int32)) == k
            )
            group = group.shuffle(max(int(counts[k]), 1), seed=seed + k)
            self._datasets.append(group)
        self.batch_size = batch_size
        self._iterators = {}
        spec = dataset.element_spec[0]
        self._input_spec = (tuple(spec.shape), np.dtype(spec.dtype.as_numpy_dtype))

    def input_spec(self):
        """Shape (without the batch axis) and dtype of one input."""
        return self._input_spec

    def start_epoch(self, shuffle):
        # Iterators repeat forever and reshuffle at each pass; an epoch
        # takes `num_batches` full batches of each group.
        pass

    def plan_streams(self, rows_needed):
        pass

    def rows(self, group, start, size):
        # Full batches that run on across passes. Batches are read in order,
        # so `start` is implied by the iterator.
        key = (group, size)
        if key not in self._iterators:
            dataset = self._datasets[group].repeat().batch(size)
            self._iterators[key] = dataset.as_numpy_iterator()
        x, y = next(self._iterators[key])
        return x, np.reshape(y, (-1,)).astype("int32")


def _concatenate_rows(parts):
    """Concatenates batches (arrays, or structures of arrays) along rows."""
    return keras.tree.map_structure(lambda *arrays: np.concatenate(arrays), *parts)


def _proportional_split(total, counts):
    """`total` rows split in proportion to `counts` (largest remainders)."""
    counts = np.asarray(counts, dtype="float64")
    if counts.sum() == 0:
        raise ValueError("The curriculum's seen groups hold no samples.")
    if total < np.count_nonzero(counts):
        raise ValueError(
            f"`batch_size`={total} is smaller than the number of groups with "
            f"samples ({np.count_nonzero(counts)}); a stratified batch needs "
            "one row of each. Use a larger `batch_size` or order='interleaved'."
        )
    shares = total * counts / counts.sum()
    sizes = np.floor(shares).astype(int)
    # Every group with samples gets a row, then the largest remainders.
    sizes[(sizes == 0) & (counts > 0)] = 1
    for i in np.argsort(-(shares - np.floor(shares)), kind="stable"):
        if sizes.sum() >= total:
            break
        sizes[i] += 1
    while sizes.sum() > total:
        sizes[np.argmax(sizes)] -= 1
    return tuple(int(s) for s in sizes)


def _make_source(x, y, partition, batch_size, rng):
    if _is_tf_dataset(x):
        if y is not None:
            raise ValueError(
                "With a `tf.data.Dataset` as `x`, pass `y=None`: the dataset "
                "must yield `(input, label)` pairs."
            )
        return _TFDataSource(x, partition, batch_size, rng)
    if y is None:
        raise ValueError(
            "`y` is required with array inputs: pass the integer class ids "
            "(or one-hot labels) of `x`."
        )
    x = keras.tree.map_structure(np.asarray, x)
    return _ArraySource(x, np.asarray(y), partition, batch_size, rng)


def _check_process_share(num_processes, process_index, batch_size, seed):
    check_integer(num_processes, "num_processes")
    if not isinstance(process_index, int) or not 0 <= process_index < num_processes:
        raise ValueError(
            f"`process_index` must be an integer in [0, {num_processes}). "
            f"Received: process_index={process_index!r}."
        )
    if num_processes > 1 and batch_size % num_processes:
        raise ValueError(
            f"`batch_size` ({batch_size}) is the global batch, split evenly "
            f"between the {num_processes} processes: make it a multiple of "
            "`num_processes`."
        )
    if num_processes > 1 and seed is None:
        raise ValueError(
            "With several processes, pass a `seed`: every process draws the "
            "same global batches and keeps its share, so their shuffles must "
            "agree."
        )
    return num_processes, process_index


def _is_tf_dataset(x):
    return type(x).__module__.startswith("tensorflow") and hasattr(x, "element_spec")


def _sparse_labels(y):
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        return np.argmax(y, axis=1)
    return np.reshape(y, (-1,))


def _check_label_range(labels, partition):
    if labels.size and (labels.min() < 0 or labels.max() >= partition.num_classes):
        raise ValueError(
            f"Labels must be class ids in [0, {partition.num_classes}) to match "
            f"`partition`. Received labels in [{labels.min()}, {labels.max()}]."
        )
