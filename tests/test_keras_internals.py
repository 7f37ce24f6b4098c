"""keras_edu/_keras_internals.py: each private-Keras touch, on this Keras.

A Keras upgrade that moves one of these internals fails here, in one file,
rather than somewhere inside a grade switch.
"""

import keras
import numpy as np
import pytest

from keras_edu import _keras_internals as internals


def test_installed_keras_is_one_the_internals_were_checked_against():
    major_minor = ".".join(keras.__version__.split(".")[:2])
    assert major_minor in internals.CHECKED_KERAS_VERSIONS, (
        f"Keras {keras.__version__} is not in CHECKED_KERAS_VERSIONS: read "
        "keras_edu/_keras_internals.py against it and add it."
    )


class _Holder(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = keras.layers.Dense(2)

    def call(self, x):
        return self.inner(x)


def test_replace_tracked_swaps_the_variables_a_built_layer_trains():
    holder = _Holder()
    holder(np.zeros((1, 3), "float32"))
    old_ids = {id(v) for v in holder.trainable_variables}
    assert len(old_ids) == 2

    new = keras.layers.Dense(5)
    new.build((None, 3))
    internals.replace_tracked(holder, inner=new)

    new_ids = {id(v) for v in holder.trainable_variables}
    assert new_ids == {id(v) for v in new.trainable_variables}
    assert not new_ids & old_ids
    assert holder(np.zeros((1, 3), "float32")).shape == (1, 5)
    # The tracker is locked again, as Keras leaves a built layer.
    assert holder._tracker.locked


def test_clear_losses_drops_activity_losses():
    layer = keras.layers.Dense(2, activity_regularizer="l2")
    layer(np.ones((1, 3), "float32"))
    assert len(layer.losses) == 1
    internals.clear_losses(layer)
    assert layer.losses == []


def test_flatten_layers_walks_nested_models():
    inner = keras.Sequential([keras.layers.Dense(2, name="d")], name="inner")
    outer = keras.Sequential([inner], name="outer")
    outer.build((None, 3))
    names = [layer.name for layer in internals.flatten_layers(outer)]
    assert names[0] == "outer" and "inner" in names and "d" in names
    without_self = internals.flatten_layers(outer, include_self=False)
    assert outer not in without_self


def test_scale_loss_for_distribution_is_identity_off_a_strategy():
    loss = keras.ops.convert_to_tensor(3.0)
    assert float(internals.scale_loss_for_distribution(loss)) == pytest.approx(3.0)


class _Batches(keras.utils.PyDataset):
    def __init__(self, n):
        super().__init__()
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return np.zeros((2, 3), "float32"), np.zeros((2, 1), "float32")


def test_epoch_iterators_are_recorded_and_their_batch_count_refreshed():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    data = _Batches(4)
    steps = []

    class _Shrink(keras.callbacks.Callback):
        def __init__(self, found):
            super().__init__()
            self.found = found

        def on_epoch_begin(self, epoch, logs=None):
            steps.append(0)
            if epoch == 1:
                data.n = 2
                internals.refresh_batch_counts(self.found, 2)

        def on_train_batch_end(self, batch, logs=None):
            steps[-1] += 1

    with internals.epoch_iterators_over(data) as found:
        model.fit(data, epochs=2, callbacks=[_Shrink(found)], verbose=0)
    # One iterator, held weakly: it dies with the fit that built it.
    assert len(found) == 1 and found[0]() is None
    assert steps == [4, 2]

    # Outside the block nothing is recorded any more.
    model.fit(data, epochs=1, verbose=0)
    assert len(found) == 1
