"""What the CIFAR model families share: layers, the network, named builders.

Every layer helper here takes a tensor and returns a tensor: the models are
built as one flat functional graph, so every layer can be tapped by name.
`residual_network` is the one builder behind both families (a stem, three
stages of residual blocks, a head; `cifar_resnet` and `cifar_wide_resnet`
give it their own stem, block and head), and `named_builders` generates a
family's named builders (`resnet8`, `wrn_16_2`, ...) from its config table.

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


def check_depth(depth, offset, examples):
    """Refuses a `depth` that is not `6n + offset` with `n >= 1`."""
    if (
        isinstance(depth, bool)
        or not isinstance(depth, numbers.Integral)
        or depth < 6 + offset
        or (depth - offset) % 6
    ):
        raise ValueError(
            f"`depth` must be 6n + {offset} with n >= 1 ({examples}, ...). "
            f"Received: depth={depth!r}."
        )


def residual_network(
    stem,
    block,
    head,
    widths,
    blocks_per_stage,
    num_classes,
    input_shape,
    weight_decay,
    data_format,
    name,
):
    """The CIFAR residual layout: a stem, three stages of blocks, a head.

    Stage `k` has `blocks_per_stage` blocks of `widths[k - 1]` channels;
    its first block has stride 1, 2, 2 for stages 1, 2, 3. Block `j` of
    stage `k` is named `stage{k}_block{j}`, and the last block's output
    `stage{k}_out` (the contract of `keras_edu.models.stage_ends`).

    Args:
        stem: `stem(inputs, weight_decay=..., data_format=...)` -> tensor.
        block: `block(x, filters, strides, name, output_name=...,
            weight_decay=..., data_format=...)` -> tensor.
        head: `head(x, num_classes, weight_decay=..., data_format=...)`
            -> logits.
        widths: Three ints, the stages' channels.
        blocks_per_stage: int >= 1.
        num_classes, input_shape, weight_decay, data_format, name: As in
            `keras_edu.models.resnet.cifar_resnet`.

    Returns:
        A `keras.Model` mapping images to logits.
    """
    check_model_args(num_classes, input_shape)
    data_format = standardize_data_format(data_format)
    kwargs = dict(weight_decay=weight_decay, data_format=data_format)

    inputs = keras.Input(shape=tuple(input_shape), name="input")
    x = stem(inputs, **kwargs)
    for stage, (filters, strides) in enumerate(zip(widths, (1, 2, 2)), 1):
        for index in range(1, blocks_per_stage + 1):
            last = index == blocks_per_stage
            x = block(
                x,
                filters,
                strides if index == 1 else 1,
                name=f"stage{stage}_block{index}",
                output_name=f"stage{stage}_out" if last else None,
                **kwargs,
            )
    outputs = head(x, num_classes, **kwargs)
    return keras.Model(inputs, outputs, name=name)


def named_builders(module, configs, build, docstring):
    """A family's named builders, generated from its config table.

    Each builder is a function named after its key in `configs` with the
    signature `(num_classes=100, input_shape=(32, 32, 3), weight_decay=0.0,
    data_format=None, name=<its key>)`; it returns `build(arch,
    num_classes=..., input_shape=..., weight_decay=..., data_format=...,
    name=...)`.

    Args:
        module: str. The `__module__` of the builders (the family's module).
        configs: dict. The family's table: architecture name -> config.
        build: `build(arch, **arguments)`: the family's generic builder
            called with `configs[arch]`.
        docstring: `docstring(arch)` -> the builder's docstring.

    Returns:
        A dict architecture name -> builder, in the table's order.
    """
    return {
        arch: _named_builder(module, arch, build, docstring(arch))
        for arch in configs
    }


def _named_builder(module, arch, build, doc):
    def builder(
        num_classes=100,
        input_shape=(32, 32, 3),
        weight_decay=0.0,
        data_format=None,
        name=arch,
    ):
        return build(
            arch,
            num_classes=num_classes,
            input_shape=input_shape,
            weight_decay=weight_decay,
            data_format=data_format,
            name=name,
        )

    # Tracebacks, reprs and pickling name the builder as a `def` would.
    builder.__code__ = builder.__code__.replace(co_name=arch, co_qualname=arch)
    builder.__name__ = builder.__qualname__ = arch
    builder.__module__ = module
    builder.__doc__ = doc
    return builder
