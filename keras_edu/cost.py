"""Training cost in FLOPs: what a grade, a teacher and an epoch cost.

Education distillation's early grades are cheaper than the full student
(a shallower network, fewer samples), so methods are compared at equal
training cost as well as at equal epochs. The count is the usual
approximation of the literature: multiply-adds of the convolutions and
dense layers, 2 FLOPs each; normalisation, activations, pooling and
additions are ignored (a few percent for these networks); a training step
costs 3 forward passes (forward + backward) of the student plus one
forward pass of each teacher that runs on the example.
"""

import keras
import numpy as np

from keras_edu import _keras_internals
from keras_edu.utils import input_shape_of

__all__ = ["TrainingCost", "forward_flops"]

# Forward + backward of the student, in forward passes.
BACKWARD_FACTOR = 3.0


def forward_flops(model, input_shape=None):
    """FLOPs of one forward pass of `model` on one example.

    Counts the `Conv` (including depthwise and grouped) and `Dense`
    layers, nested ones included, at 2 FLOPs per multiply-add, from the
    shapes of one inference pass on a zero example.

    Args:
        model: A built Keras model or layer (a `keras_edu.Teacher` works
            too: its model is counted).
        input_shape: The example's shape without the batch axis; defaults
            to the model's input shape.

    Returns:
        The FLOPs, an int.

    Example:

    ```python
    import keras
    import keras_edu

    model = keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(4, 3, padding="same"),  # 8*8*4 outputs x 3*3*3
        keras.layers.Flatten(),
        keras.layers.Dense(10),                     # 256 inputs x 10
    ])
    keras_edu.cost.forward_flops(model)  # 2 * (8*8*4*27 + 256*10) = 18944
    ```
    """
    model = getattr(model, "model", model)
    shape = tuple(input_shape) if input_shape is not None else input_shape_of(model)
    counted = []
    layers = [
        layer
        for layer in _keras_internals.flatten_layers(model, include_self=False)
        if isinstance(layer, (keras.layers.Dense, _CONV_TYPES))
    ]
    # Record each layer's input and output shapes as the pass runs: nested
    # and subclassed blocks (a TeachingReference) have no graph to read
    # their shapes from. The instance attribute is removed afterwards.
    for layer in layers:
        layer.call = _recording(layer, counted)
    try:
        model(np.zeros((1,) + shape, "float32"), training=False)
    finally:
        for layer in layers:
            del layer.call
    return int(sum(_layer_flops(*entry) for entry in counted))


_CONV_TYPES = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
               keras.layers.DepthwiseConv2D)


def _recording(layer, counted):
    original = layer.call

    def call(inputs, *args, **kwargs):
        outputs = original(inputs, *args, **kwargs)
        counted.append((layer, tuple(inputs.shape), tuple(outputs.shape)))
        return outputs

    return call


def _layer_flops(layer, input_shape, output_shape):
    outputs = int(np.prod(output_shape[1:]))
    kernel = tuple(layer.kernel.shape)
    if isinstance(layer, keras.layers.Dense):
        return 2 * outputs * kernel[0]
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        # kernel (kh, kw, in, multiplier): one kh*kw filter per output.
        return 2 * outputs * kernel[0] * kernel[1]
    # kernel (*spatial, in / groups, out): each output sums over it.
    return 2 * outputs * int(np.prod(kernel[:-1]))


class TrainingCost(keras.callbacks.Callback):
    """Logs the cumulative training cost, `train_cost` (FLOPs), every epoch.

    An epoch costs `steps * batch_size` examples, each
    `3 * student_flops + teacher_flops`: forward and backward of the
    student that trained in that epoch (for a graded student, the current
    grade's) plus the forward passes of the teachers that run on the
    example. For a `keras_edu.Distiller` with a graded student the teacher
    part follows the curriculum: each seen group's share of the examples
    times the FLOPs of the teachers that teach it (plus the generalists of
    `generalists_teach="seen"`); for a plain Distiller every teacher runs on
    every example; a bare `keras.Model` has no teacher part.

    With `Distiller(..., cache_teachers=...)` the teachers never run in a
    step: each ran once over the training samples it teaches when `fit`
    started (`Distiller.teacher_cache_examples`), so their part is that
    pass, counted once at the start, and an epoch costs the student's part
    only.

    Args:
        batch_size: The batch size passed to `fit`.

    Example:

    ```python
    import keras, numpy as np
    import keras_edu

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    history = model.fit(np.zeros((8, 4)), np.zeros((8, 2)), batch_size=4,
                        epochs=2, verbose=0,
                        callbacks=[keras_edu.cost.TrainingCost(batch_size=4)])
    history.history["train_cost"]  # [384.0, 768.0]: 8 examples x 3 x (2*4*2)
    ```
    """

    def __init__(self, batch_size):
        super().__init__()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(
                "`batch_size` must be the positive integer batch size given to "
                f"`fit`. Received: batch_size={batch_size!r}."
            )
        self.batch_size = batch_size
        self.total = 0.0
        self._flops = {}

    def on_train_begin(self, logs=None):
        self.total = float(self.teacher_cache_flops())

    def teacher_cache_flops(self):
        """FLOPs of the teacher pass that filled this fit's teacher cache."""
        examples = getattr(self.model, "teacher_cache_examples", None)
        if not getattr(self.model, "cache_teachers", False) or not examples:
            return 0
        return sum(n * self._forward(t) for n, t in zip(examples, self.model.teachers))

    def on_epoch_end(self, epoch, logs=None):
        examples = self.params["steps"] * self.batch_size
        self.total += examples * self.flops_per_example()
        if logs is not None:
            logs["train_cost"] = self.total

    def flops_per_example(self):
        """Training FLOPs of one example at the model's current grade."""
        model = self.model
        student = getattr(model, "student", model)
        cost = BACKWARD_FACTOR * self._forward(student)
        teachers = getattr(model, "teachers", None)
        if not teachers or getattr(model, "cache_teachers", False):
            return cost
        teacher_flops = [self._forward(t) for t in teachers]
        plan = model.routing_plan(getattr(model, "grade", None))
        shares = None
        if plan.group_branches:
            counts = np.asarray(
                model.curriculum.samples_per_group()[: plan.grade], "float64"
            )
            shares = list(counts / counts.sum())
        return cost + plan.teacher_flops(teacher_flops, shares)

    def _forward(self, model):
        key = id(getattr(model, "model", model))
        if key not in self._flops:
            self._flops[key] = forward_flops(model)
        return self._flops[key]
