"""A frozen teacher that declares which global classes its logits cover."""

import keras
import numpy as np

from keras_edu import _keras_internals
from keras_edu.utils import output_width


@keras.saving.register_keras_serializable(package="keras_edu")
class Teacher(keras.layers.Layer):
    """A frozen teacher model and the global classes its logits cover.

    A teacher is any trained `keras.Model` that outputs logits. A
    *generalist* covers every class of the student in the same order; a
    *specialist* covers only some classes (for instance one group of an
    education-distillation curriculum) and says which, in the order of its
    logits. The wrapped model always runs in inference mode (BatchNorm uses
    its moving statistics, dropout is off) and its weights are never
    trainable.

    Args:
        model: A `keras.Model` whose last axis are logits (no softmax).
        classes: The global class ids covered by the model's logits, in
            order: `model(x)[:, i]` is the logit of class `classes[i]`.
            `None` (default) means all classes `0 .. width - 1` in order.
        **kwargs: Base layer keyword arguments, such as `name`.

    Example:

    ```python
    import keras, numpy as np
    import keras_edu

    def mlp(width):
        return keras.Sequential(
            [keras.Input((8,)), keras.layers.Dense(width)]
        )

    # A specialist whose two logits are the global classes 3 and 1.
    teacher = keras_edu.Teacher(mlp(2), classes=[3, 1])
    teacher.classes  # (3, 1)
    logits = teacher(np.zeros((4, 8), "float32"))  # shape (4, 2)
    ```
    """

    def __init__(self, model, classes=None, **kwargs):
        if not isinstance(model, keras.Model):
            raise ValueError(
                "`model` must be a `keras.Model` that outputs logits. "
                f"Received: model={model!r} of type {type(model).__name__}."
            )
        kwargs.setdefault("name", f"teacher_{model.name}")
        super().__init__(**kwargs)
        self.model = model
        # Freezing the layer freezes every variable inside it, so the
        # teacher never reaches an optimizer.
        self.model.trainable = False
        self.trainable = False
        self.classes = _validate_classes(classes, output_width(model))
        # Nothing to build: the wrapped model builds itself when called. Built
        # now, the first call inside `torch.compile` (`jit_compile=True` on
        # PyTorch) does not trace Keras's build machinery, which fails there.
        self.built = True

    @property
    def metrics(self):
        # A teacher trained with compile()/fit() carries its own `loss` and
        # `accuracy` trackers. They are not the distiller's and would shadow
        # its logs (Keras skips sub-models that are trainers, but not one
        # wrapped in a layer), so a teacher exposes no metrics.
        return []

    @property
    def num_classes(self):
        """The number of logits the teacher outputs."""
        return len(self.classes)

    def call(self, inputs):
        # `training=False` whatever the caller's mode: a teacher is frozen,
        # BatchNorm statistics included.
        outputs = self.model(inputs, training=False)
        # Activity regularizers inside the teacher record losses when it
        # runs; they are not the student's and must not enter its loss.
        _keras_internals.clear_losses(self.model)
        return outputs

    def compute_output_spec(self, inputs):
        return self.model.compute_output_spec(inputs)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "model": keras.saving.serialize_keras_object(self.model),
                "classes": list(self.classes),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(
            config["model"]
        )
        return cls(**config)


def _validate_classes(classes, width):
    if classes is None:
        if width is None:
            raise ValueError(
                "Cannot tell how many classes the teacher covers: its "
                "output shape is unknown. Pass `classes=[...]` or build the "
                "model first (for example by calling it on a batch)."
            )
        return tuple(range(width))
    ids = np.asarray(classes)
    if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(
            "`classes` must be a non-empty list of integer class ids. "
            f"Received: classes={classes!r}."
        )
    if (ids < 0).any():
        raise ValueError(
            "`classes` must hold non-negative class ids. Received negative "
            f"ids {sorted(set(ids[ids < 0].tolist()))} in classes={classes!r}."
        )
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise ValueError(
            "`classes` must not repeat a class id. Repeated: "
            f"{unique[counts > 1].tolist()} in classes={classes!r}."
        )
    if width is not None and width != ids.size:
        raise ValueError(
            f"The teacher outputs {width} logits but `classes` lists "
            f"{ids.size} class ids. Pass one class id per logit, in order. "
            f"Received: classes={classes!r}."
        )
    return tuple(int(c) for c in ids)
