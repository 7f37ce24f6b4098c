"""CIFAR ResNets (He et al., 2016) as used in the distillation literature.

Ported layer for layer from `models/resnet.py` of RepDistiller (CRD, Tian et
al., 2020), which mdistiller copies: a 3x3 stem, three stages of post-
activation basic blocks (strides 1, 2, 2), global average pooling and a
linear classifier. `resnet8x4` and `resnet32x4` are the 4x wider variants
with stage widths 64/128/256 behind a 32-channel stem.

Layer names (the contract `keras_edu.models.stage_ends` relies on):

```
stem_conv, stem_bn, stem_relu
stage{k}_block{j}_conv1, _bn1, _relu1, _conv2, _bn2,
stage{k}_block{j}_shortcut_conv, _shortcut_bn   (when the shape changes)
stage{k}_block{j}_add        pre-activation sum (RepDistiller's "preact")
stage{k}_block{j}_out        block output; the last block's is stage{k}_out
head_pool, logits
```

Strided 3x3 convolutions are preceded by a `..._conv1_pad` ZeroPadding2D.
"""

import functools

from keras import layers

from keras_edu.models import common


def apply_basic_block(
    x,
    filters,
    strides,
    name,
    output_name=None,
    weight_decay=0.0,
    data_format=None,
):
    """A post-activation basic block: `relu(bn(conv(relu(bn(conv(x))))) + s)`.

    Args:
        x: Input tensor.
        filters: int. Output channels of both 3x3 convolutions.
        strides: int. Stride of the first convolution and of the shortcut.
        name: str. Prefix of the block's layer names.
        output_name: str or `None`. Name of the final ReLU; defaults to
            `f"{name}_out"`.
        weight_decay: float. See `cifar_resnet`.
        data_format: `"channels_last"` or `"channels_first"`.

    Returns:
        The block's output tensor.
    """
    kwargs = dict(weight_decay=weight_decay, data_format=data_format)
    in_channels = x.shape[common.channel_axis(data_format)]

    shortcut = x
    # Option B shortcut of the references: a projection only when the
    # shape changes (stride 2, or the stem/stage widths differ as in x4).
    if strides != 1 or in_channels != filters:
        shortcut = common.conv(
            x, filters, 1, strides, f"{name}_shortcut_conv", **kwargs
        )
        shortcut = common.batch_norm(
            shortcut, f"{name}_shortcut_bn", data_format
        )

    y = common.conv(x, filters, 3, strides, f"{name}_conv1", **kwargs)
    y = common.batch_norm(y, f"{name}_bn1", data_format)
    y = common.relu(y, f"{name}_relu1")
    y = common.conv(y, filters, 3, 1, f"{name}_conv2", **kwargs)
    y = common.batch_norm(y, f"{name}_bn2", data_format)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return common.relu(y, output_name or f"{name}_out")


def cifar_resnet(
    depth,
    widths,
    num_classes=100,
    input_shape=(32, 32, 3),
    weight_decay=0.0,
    data_format=None,
    name="cifar_resnet",
):
    """Builds a CIFAR ResNet of depth `6n + 2` as a flat functional model.

    Args:
        depth: int. `6n + 2`: `n` basic blocks per stage, two 3x3
            convolutions per block, plus the stem and the classifier.
        widths: Four ints: the stem's channels, then each stage's
            (`[16, 16, 32, 64]` for ResNet20, `[32, 64, 128, 256]` for
            ResNet8x4).
        num_classes: int. Size of the logits.
        input_shape: Shape of one image, e.g. `(32, 32, 3)` or
            `(28, 28, 1)`. Any size of at least 8x8 works: the head pools
            globally.
        weight_decay: float. Adds `keras.regularizers.L2(weight_decay / 2)`
            to every convolution and Dense kernel, which reproduces PyTorch
            SGD's `weight_decay=weight_decay` on those kernels (its gradient
            term `wd * w` is the gradient of `(wd / 2) * ||w||^2`). Unlike
            PyTorch's SGD it leaves BatchNorm parameters and the classifier
            bias undecayed. Use either this or the optimizer's own
            `weight_decay`, not both.
        data_format: `None`, `"channels_last"` or `"channels_first"`;
            `None` takes `keras.config.image_data_format()`.
        name: str. The model's name.

    Returns:
        A `keras.Model` mapping images to logits (no softmax).

    Example:

    ```python
    import numpy as np
    from keras_edu.models.resnet import cifar_resnet

    model = cifar_resnet(20, [16, 16, 32, 64], num_classes=10)
    model.predict(np.zeros((2, 32, 32, 3), "float32"), verbose=0).shape
    # (2, 10)
    ```
    """
    common.check_depth(depth, offset=2, examples="8, 14, 20, 32, 44, 56, 110")
    if len(widths) != 4:
        raise ValueError(
            "`widths` must hold 4 ints (stem, stage 1, stage 2, stage 3). "
            f"Received: widths={widths!r}."
        )
    return common.residual_network(
        functools.partial(_stem, filters=widths[0]),
        apply_basic_block,
        common.classifier,
        widths[1:],
        (depth - 2) // 6,
        num_classes,
        input_shape,
        weight_decay,
        data_format,
        name,
    )


def _stem(inputs, filters, weight_decay, data_format):
    x = common.conv(
        inputs, filters, 3, 1, "stem_conv", weight_decay, data_format
    )
    x = common.batch_norm(x, "stem_bn", data_format)
    return common.relu(x, "stem_relu")


_THIN = [16, 16, 32, 64]
_WIDE = [32, 64, 128, 256]

# The named architectures: name -> (label, depth, widths).
CONFIGS = {
    "resnet8": ("ResNet8", 8, _THIN),
    "resnet14": ("ResNet14", 14, _THIN),
    "resnet20": ("ResNet20", 20, _THIN),
    "resnet32": ("ResNet32", 32, _THIN),
    "resnet44": ("ResNet44", 44, _THIN),
    "resnet56": ("ResNet56", 56, _THIN),
    "resnet110": ("ResNet110", 110, _THIN),
    "resnet8x4": ("ResNet8x4", 8, _WIDE),
    "resnet32x4": ("ResNet32x4", 32, _WIDE),
}


def _build(arch, **arguments):
    _, depth, widths = CONFIGS[arch]
    return cifar_resnet(depth, widths, **arguments)


# One template for the named builders, as keras.applications does.
BUILDER_DOCSTRING = """{label} for CIFAR, RepDistiller's `{arch}`.

    Depth {depth}: a {stem}-channel stem, then three stages of {blocks} basic
    block(s) of widths {stages}. See `keras_edu.models.resnet.cifar_resnet`
    for the layer layout.

""" + common.BUILDER_ARGS_DOCSTRING


def _docstring(arch):
    label, depth, widths = CONFIGS[arch]
    return BUILDER_DOCSTRING.format(
        label=label,
        arch=arch,
        depth=depth,
        stem=widths[0],
        blocks=(depth - 2) // 6,
        stages="/".join(str(w) for w in widths[1:]),
    )


# The named builders, generated from `CONFIGS` (signatures in
# `keras_edu.models.common.named_builders`).
BUILDERS = common.named_builders(__name__, CONFIGS, _build, _docstring)
resnet8 = BUILDERS["resnet8"]
resnet14 = BUILDERS["resnet14"]
resnet20 = BUILDERS["resnet20"]
resnet32 = BUILDERS["resnet32"]
resnet44 = BUILDERS["resnet44"]
resnet56 = BUILDERS["resnet56"]
resnet110 = BUILDERS["resnet110"]
resnet8x4 = BUILDERS["resnet8x4"]
resnet32x4 = BUILDERS["resnet32x4"]
