"""Every use of a private Keras API in keras_edu, in one module.

keras_edu needs a few things Keras keeps private: swapping the sub-layers a
built model tracks (a grade switch replaces the student), clearing a
teacher's activity losses, walking a model's layers, the per-replica loss
scaling of `tf.distribute` and the batch count of a running epoch iterator. A Keras upgrade has this
file to check; `tests/test_keras_internals.py` exercises each function and
pins the Keras versions it was checked against (`CHECKED_KERAS_VERSIONS`).
"""

import contextlib
import weakref

import keras

# Keras releases against which every function here was read and tested.
CHECKED_KERAS_VERSIONS = ("3.12", "3.13", "3.14", "3.15")


def replace_tracked(layer, **attributes):
    """Sets attributes of a built `layer` to new layers, tracking them.

    A built layer refuses new sub-layers and would keep tracking (so
    training and saving) the old ones: the old values (a layer, a list of
    layers or None) are untracked and the new ones tracked in their place.
    """
    tracker = layer._tracker
    locked = tracker.locked
    tracker.unlock()
    try:
        for name, value in attributes.items():
            old = getattr(layer, name, None)
            for sublayer in old if isinstance(old, (list, tuple)) else [old]:
                if sublayer is not None:
                    tracker.untrack(sublayer)
            setattr(layer, name, value)
    finally:
        if locked:
            tracker.lock()
    if keras.backend.backend() == "torch":
        # `zero_grad()` walks the torch parameters registered at build
        # time; register the new variables there.
        layer._track_variables()


def clear_losses(layer):
    """Drops the activity losses `layer` collected in its last call."""
    layer._clear_losses()


def flatten_layers(layer, include_self=True):
    """`layer` (if `include_self`) and all its sub-layers, recursively."""
    return list(layer._flatten_layers(include_self=include_self))


def scale_loss_for_distribution(loss):
    """Divides `loss` by the replicas of the current `tf.distribute` strategy.

    Keras' TensorFlow trainer sums the replicas' gradients and loss values
    and expects `compute_loss` to return each replica's share, as its own
    losses do; a no-op off TensorFlow and on one replica.
    """
    from keras.src.losses.loss import scale_loss_for_distribution as scale

    return scale(loss)


@contextlib.contextmanager
def epoch_iterators_over(py_dataset):
    """Collects the epoch iterators Keras builds over `py_dataset` in the block.

    `fit()` reads a PyDataset's `num_batches` once, when it builds its epoch
    iterator, and then runs that many steps every epoch. A curriculum
    changes its number of batches at a grade switch, so it must tell the
    iterators serving it (`refresh_batch_counts`). Keras keeps them local to
    `fit`; this records each one as it is built, while the block runs.

    Yields:
        A list of weak references to those iterators, filled as they appear.
    """
    from keras.src.trainers.epoch_iterator import EpochIterator

    found = []
    original = EpochIterator.__init__

    def recording_init(iterator, *args, **kwargs):
        original(iterator, *args, **kwargs)
        if getattr(iterator.data_adapter, "py_dataset", None) is py_dataset:
            found.append(weakref.ref(iterator))

    EpochIterator.__init__ = recording_init
    try:
        yield found
    finally:
        EpochIterator.__init__ = original


def refresh_batch_counts(iterators, num_batches):
    """Sets the per-epoch step count of the `epoch_iterators_over` iterators."""
    for reference in iterators:
        iterator = reference()
        if iterator is not None:
            iterator._num_batches = num_batches
