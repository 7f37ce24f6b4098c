"""`CurriculumDataset(num_processes=...)`: each process's share of a global batch."""

import numpy as np
import pytest

import keras_edu

PARTITION = keras_edu.ClassPartition.contiguous(6, "1:1:1")


def dataset(**kwargs):
    y = np.repeat(np.arange(6), 10)
    # Each input row holds its sample id, so batches can be compared by id.
    x = np.arange(len(y), dtype="float32")[:, None] * np.ones((1, 3), "float32")
    return keras_edu.CurriculumDataset(
        x, y, partition=PARTITION, batch_size=12, seed=0, **kwargs
    )


def epochs_of_batches(data):
    """The batches of two epochs of each grade, as `data` serves them."""
    batches = []
    for grade in (1, 2, 3):
        data.set_grade(grade)
        for _ in range(2):
            data.on_epoch_begin()
            batches += [data[i] for i in range(len(data))]
    return batches


@pytest.mark.parametrize("order", ["stratified", "interleaved", "sequential"])
def test_two_processes_shares_put_together_are_the_global_batches(order):
    whole = epochs_of_batches(dataset(order=order))
    shares = [
        epochs_of_batches(dataset(order=order, num_processes=2, process_index=p))
        for p in (0, 1)
    ]
    assert len(shares[0]) == len(shares[1]) == len(whole)
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *shares):
        assert len(y0) == len(y1) == 6
        np.testing.assert_array_equal(np.concatenate([x0, x1]), x)
        np.testing.assert_array_equal(np.concatenate([y0, y1]), y)
    # Grade 3, stratified: the global batch keeps its blocks of 4 rows per
    # group, which the Distiller's per-group teacher passes rely on.
    if order == "stratified":
        _, y = whole[-1]
        np.testing.assert_array_equal(PARTITION.group_of(y), np.repeat([0, 1, 2], 4))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_processes": 0}, "`num_processes` must be a positive integer"),
        ({"num_processes": 2, "process_index": 2}, r"`process_index` must be .* \[0, 2\)"),
        ({"num_processes": 5}, "multiple of `num_processes`"),
        ({"num_processes": 2, "seed": None}, "pass a `seed`"),
    ],
)
def test_bad_process_settings(kwargs, match):
    y = np.repeat(np.arange(6), 10)
    x = np.zeros((60, 3), "float32")
    kwargs = {"seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        keras_edu.CurriculumDataset(x, y, partition=PARTITION, batch_size=12, **kwargs)
