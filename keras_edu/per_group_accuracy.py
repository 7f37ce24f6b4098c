"""`PerGroupAccuracy`: logs the validation accuracy of each class group."""

import keras
import numpy as np

from keras_edu.partition import ClassPartition
from keras_edu.utils import check_integer

# `keras_edu.visualize.curriculum_chart` reads these keys back from History.
KEY_TEMPLATE = "val_group_{}_accuracy"


class PerGroupAccuracy(keras.callbacks.Callback):
    """Logs `val_group_{k}_accuracy`, the top-1 accuracy of each class group.

    At the end of every epoch the model predicts `x`, and for each group `k`
    of `partition` (1-based, numbered like the grades) the callback logs the
    fraction of the examples whose label is in group `k` that the model
    classifies correctly. The values go into the epoch's logs, so `History`,
    `CSVLogger`, TensorBoard and the progress bar see them, and
    `keras_edu.visualize.curriculum_chart(history)` draws them.

    With a graded student (`keras_edu.Distiller` over a
    `keras_edu.GradedStudent`), the head of grade `g` predicts only the
    classes of groups `1..g` (logit `i` is class
    `partition.classes_up_to(g)[i]`). Examples of groups not seen yet count
    as errors, as in the Distiller's `val_accuracy`, so a group's curve stays
    at 0 until its grade starts. Any other model must output one logit (or
    probability) per class of `partition`.

    The callback runs one extra `predict` over `x` per epoch; pass a subset
    of the validation data when that is too slow.

    Args:
        x: Validation inputs, anything `model.predict` takes (NumPy arrays,
            tensors or an unbatched array-like). Not a `tf.data.Dataset`: the
            labels must be known as an array.
        y: Integer labels of `x`, shape `(N,)` or `(N, 1)`.
        partition: A `keras_edu.ClassPartition`, or a list of groups of class
            ids (`[[0, 1, 2], [3, 4, 5]]`), every class in exactly one group.
        batch_size: Batch size of the `predict` call. Defaults to 256.

    Example:

    ```python
    import keras, numpy as np
    import keras_edu
    from keras_edu.per_group_accuracy import PerGroupAccuracy

    x = np.random.rand(60, 8).astype("float32")
    y = np.repeat(np.arange(6), 10)
    partition = keras_edu.ClassPartition.contiguous(6, "1:1:1")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(6)])
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(x, y, epochs=2, verbose=0,
                        callbacks=[PerGroupAccuracy(x, y, partition)])
    sorted(k for k in history.history if k.startswith("val_group"))
    # ['val_group_1_accuracy', 'val_group_2_accuracy', 'val_group_3_accuracy']
    ```
    """

    def __init__(self, x, y, partition, batch_size=256):
        super().__init__()
        if not isinstance(partition, ClassPartition):
            try:
                partition = ClassPartition.from_groups(partition)
            except ValueError as error:
                raise ValueError(
                    "`partition` must be a `keras_edu.ClassPartition` or a "
                    f"list of groups of class ids. {error}"
                ) from None
        labels = np.asarray(y)
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                "`y` must hold integer class ids, shape (N,) or (N, 1). "
                f"Received: dtype={labels.dtype}, shape={labels.shape}. "
                "Pass sparse labels (e.g. `np.argmax(one_hot, -1)`)."
            )
        if labels.size and (labels.min() < 0 or labels.max() >= partition.num_classes):
            raise ValueError(
                f"`y` holds class ids outside [0, {partition.num_classes}), "
                f"the classes of `partition`. Received: min={labels.min()}, "
                f"max={labels.max()}."
            )
        num_inputs = len(x) if hasattr(x, "__len__") else None
        if num_inputs is not None and num_inputs != len(labels):
            raise ValueError(
                f"`x` and `y` must have the same length. Received: len(x)="
                f"{num_inputs}, len(y)={len(labels)}."
            )
        self.x = x
        self.labels = labels
        self.partition = partition
        self.batch_size = check_integer(batch_size, "batch_size")
        # Each example's group, once: the groups never change during `fit`.
        self._groups = partition.group_of(labels) if labels.size else labels

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs.update(self.compute(self.model))

    def compute(self, model):
        """The `{"val_group_{k}_accuracy": value}` dict of `model` on `x`."""
        outputs = model.predict(self.x, batch_size=self.batch_size, verbose=0)
        outputs = np.asarray(keras.ops.convert_to_numpy(outputs))
        classes = self._output_classes(model, outputs.shape[-1])
        predicted = classes[np.argmax(outputs, axis=-1)]
        correct = predicted == self.labels
        values = {}
        for index in range(self.partition.num_groups):
            members = self._groups == index
            # A group without validation examples has no accuracy; NaN keeps
            # the chart honest instead of drawing a fake 0 or 1.
            values[KEY_TEMPLATE.format(index + 1)] = (
                float(np.mean(correct[members])) if members.any() else float("nan")
            )
        return values

    def _output_classes(self, model, width):
        """The global class id of each output column of `model`."""
        grade = getattr(model, "grade", None)
        if grade is not None and getattr(model, "graded_student", None) is not None:
            classes = self.partition.classes_up_to(grade)
        else:
            classes = list(range(self.partition.num_classes))
        if width != len(classes):
            raise ValueError(
                f"The model outputs {width} values per example, but "
                f"`partition` has {len(classes)} classes"
                + (f" up to grade {grade}" if grade is not None else "")
                + ". Pass the partition the model was trained with."
            )
        return np.asarray(classes)
