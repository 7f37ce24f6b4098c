"""Layers shared by the CIFAR model families.

Every helper here takes a tensor and returns a tensor: the models are built
as one flat functional graph, so every layer can be tapped by name.

The defaults follow the PyTorch references of the distillation literature
(RepDistiller / CRD, mdistiller), so that their training recipes carry over:

- 3x3 and 1x1 convolutions have no bias (a BatchNorm follows or precedes
  them) and use Kaiming normal initialisation in `fan_out` mode without
  truncation, as both `models/resnet.py` and `models/wrn.py` do.
- BatchNorm uses PyTorch's defaults: `momentum=0.9` in Keras's convention
  (PyTorch's `momentum=0.1`) and `epsilon=1e-5`.
- Strided 3x3 convolutions pad one pixel on every side, as PyTorch's
  `padding=1` does. Keras's `padding="same"` would pad only bottom/right for
  stride 2 on even inputs, which shifts the sampling grid by one pixel and
  would make ported PyTorch weights compute something else.
- The classifier is initialised like PyTorch's `nn.Linear`
  (`U(-1/sqrt(fan_in), 1/sqrt(fan_in))`), with zero bias.
"""

import numbers

import keras
from keras import layers

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def standardize_data_format(data_format):
    """`None` -> the Keras config value; anything else is validated."""
    data_format = data_format or keras.config.image_data_format()
    if data_format not in ("channels_last", "channels_first"):
        raise ValueError(
            "`data_format` must be 'channels_last' or 'channels_first'. "
            f"Received: data_format={data_format!r}."
        )
    return data_format


def channel_axis(data_format):
    return -1 if data_format == "channels_last" else 1


def conv_initializer():
    """Kaiming normal, `fan_out` mode, untruncated (the references' init)."""
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="untruncated_normal"
    )


def dense_initializer():
    """PyTorch's `nn.Linear` default: `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`."""
    # VarianceScaling's uniform limit is sqrt(3 * scale / fan_in).
    return keras.initializers.VarianceScaling(
        scale=1.0 / 3.0, mode="fan_in", distribution="uniform"
    )


def kernel_regularizer(weight_decay):
    """The L2 penalty equivalent to PyTorch SGD's coupled `weight_decay`.

    PyTorch's SGD adds `wd * w` to the gradient, which is the gradient of
    `(wd / 2) * ||w||^2`; `keras.regularizers.L2(l2)` adds `l2 * ||w||^2`,
    hence `l2 = wd / 2`. `None` when `weight_decay` is 0 so the saved config
    stays free of no-op regularizers.
    """
    if not isinstance(weight_decay, numbers.Real) or weight_decay < 0:
        raise ValueError(
            "`weight_decay` must be a number >= 0. "
            f"Received: weight_decay={weight_decay!r}."
        )
    if weight_decay == 0:
        return None
    return keras.regularizers.L2(weight_decay / 2.0)


def check_model_args(num_classes, input_shape):
    if not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(
            "`num_classes` must be a positive integer. "
            f"Received: num_classes={num_classes!r}."
        )
    if len(tuple(input_shape)) != 3:
        raise ValueError(
            "`input_shape` must be (height, width, channels) or, for "
            "channels_first, (channels, height, width). "
            f"Received: input_shape={input_shape!r}."
        )


def conv(
    x,
    filters,
    kernel_size,
    strides,
    name,
    weight_decay=0.0,
    data_format=None,
):
    """A bias-free convolution padded like PyTorch's `padding=k // 2`."""
    padding = "same"
    if strides > 1 and kernel_size > 1:
        x = layers.ZeroPadding2D(
            kernel_size // 2, data_format=data_format, name=f"{name}_pad"
        )(x)
        padding = "valid"
    return layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=False,
        kernel_initializer=conv_initializer(),
        kernel_regularizer=kernel_regularizer(weight_decay),
        data_format=data_format,
        name=name,
    )(x)


def batch_norm(x, name, data_format=None):
    return layers.BatchNormalization(
        axis=channel_axis(data_format),
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        name=name,
    )(x)


def relu(x, name):
    return layers.Activation("relu", name=name)(x)


def classifier(x, num_classes, weight_decay=0.0, data_format=None):
    """`head_pool` (global average pooling) then the `logits` Dense layer.

    Global average pooling instead of the references' `AvgPool2d(8)`: the
    same thing on 32x32 inputs, and it also accepts 28x28 (7x7 maps).
    """
    x = layers.GlobalAveragePooling2D(
        data_format=data_format, name="head_pool"
    )(x)
    return layers.Dense(
        num_classes,
        kernel_initializer=dense_initializer(),
        kernel_regularizer=kernel_regularizer(weight_decay),
        name="logits",
    )(x)


# The part of the named builders' docstrings that every family shares
# (`resnet8`, `wrn_16_2`, ...): their arguments are the same. Filled in with
# `str.format(arch=...)` after the family's own summary.
BUILDER_ARGS_DOCSTRING = """    Args:
        num_classes: int. Size of the logits. Defaults to 100 (CIFAR-100).
        input_shape: Shape of one image. Defaults to `(32, 32, 3)`; use
            `(28, 28, 1)` for Fashion-MNIST.
        weight_decay: float. L2 on conv/Dense kernels scaled to match
            PyTorch SGD's `weight_decay`: `L2(weight_decay / 2)`.
        data_format: `None`, `"channels_last"` or `"channels_first"`.
        name: str. The model's name. Defaults to `"{arch}"`.

    Returns:
        A flat functional `keras.Model` that outputs logits (no softmax).

    Example:

    ```python
    import numpy as np
    import keras_edu.models

    model = keras_edu.models.{arch}(num_classes=10, input_shape=(28, 28, 1))
    model.predict(np.zeros((2, 28, 28, 1), "float32"), verbose=0).shape
    # (2, 10)
    ```
"""
