"""Small helpers shared across keras_edu modules."""

import math
import numbers

import keras


def output_width(model):
    """The size of the last axis of a model's single output, or `None`."""
    try:
        shape = model.output_shape
    except (AttributeError, ValueError, RuntimeError):
        return None
    if isinstance(shape, (list, dict)):
        return None
    return None if not shape else shape[-1]


def input_shape_of(model):
    """The shape of a model's single input without its batch axis, or `None`."""
    inputs = getattr(model, "inputs", None)
    if not inputs or len(inputs) != 1:
        return None
    return tuple(inputs[0].shape[1:])


def ends_in_softmax(model):
    """True when a functional/sequential model's last layer applies softmax."""
    layers = getattr(model, "layers", None)
    if not layers:
        return False
    last = layers[-1]
    if isinstance(last, keras.layers.Softmax):
        return True
    return getattr(last, "activation", None) is keras.activations.softmax


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_probability(value, name):
    if not _is_real(value) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(
            f"`{name}` must be a number in [0, 1]. Received: {name}={value!r}."
        )
    return float(value)


def check_positive(value, name):
    if not _is_real(value) or not math.isfinite(float(value)) or value <= 0:
        raise ValueError(
            f"`{name}` must be a positive, finite number. Received: "
            f"{name}={value!r}."
        )
    return float(value)


def check_integer(value, name, minimum=1, meaning=""):
    """`value` as an int, or a ValueError naming `name` if it is not >= `minimum`.

    NumPy integers are accepted; booleans are not. `meaning` (e.g.
    `" (0 turns it off)"`) follows the requirement in the message.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        requirement = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(
            f"`{name}` must be {requirement}{meaning}. Received: {name}={value!r}."
        )
    return int(value)
