"""Wide ResNets (Zagoruyko & Komodakis, 2016) for CIFAR.

Ported layer for layer from `models/wrn.py` of RepDistiller (CRD, Tian et
al., 2020), which mdistiller copies: a 16-channel 3x3 stem convolution, three
stages of pre-activation basic blocks of widths `16k`, `32k`, `64k` (strides
1, 2, 2), then BatchNorm, ReLU, global average pooling and a linear
classifier. WRN-d-k has `(d - 4) / 6` blocks per stage.

Layer names (the contract `keras_edu.models.stage_ends` relies on):

```
stem_conv                      (pre-activation: no BN/ReLU in the stem)
stage{k}_block{j}_bn1, _relu1, _conv1, _bn2, _relu2, _conv2
stage{k}_block{j}_shortcut_conv   (when the shape changes)
stage{k}_block{j}_out          the residual sum; the last block's is
                               stage{k}_out
head_bn, head_relu, head_pool, logits
```

As in `keras_edu.models.resnet`, strided 3x3 convolutions are preceded by
a `..._conv1_pad` ZeroPadding2D.
"""

import functools
import numbers

from keras import layers

from keras_edu.models import common


def apply_preact_block(
    x,
    filters,
    strides,
    name,
    output_name=None,
    dropout_rate=0.0,
    weight_decay=0.0,
    data_format=None,
):
    """A pre-activation block: `s + conv(relu(bn(conv(relu(bn(x))))))`.

    When the shape changes, the shortcut is a 1x1 convolution of the
    *activated* input `relu(bn(x))`, as in the reference implementation;
    otherwise it is `x` itself.

    Args:
        x: Input tensor.
        filters: int. Output channels of both 3x3 convolutions.
        strides: int. Stride of the first convolution and of the shortcut.
        name: str. Prefix of the block's layer names.
        output_name: str or `None`. Name of the residual `Add`; defaults to
            `f"{name}_out"`.
        dropout_rate: float. Dropout between the two convolutions (0 in
            every distillation benchmark; the layer is omitted then).
        weight_decay: float. See `keras_edu.models.resnet.cifar_resnet`.
        data_format: `"channels_last"` or `"channels_first"`.

    Returns:
        The block's output tensor.
    """
    kwargs = dict(weight_decay=weight_decay, data_format=data_format)
    in_channels = x.shape[common.channel_axis(data_format)]

    activated = common.batch_norm(x, f"{name}_bn1", data_format)
    activated = common.relu(activated, f"{name}_relu1")

    shortcut = x
    if strides != 1 or in_channels != filters:
        shortcut = common.conv(
            activated, filters, 1, strides, f"{name}_shortcut_conv", **kwargs
        )

    y = common.conv(activated, filters, 3, strides, f"{name}_conv1", **kwargs)
    y = common.batch_norm(y, f"{name}_bn2", data_format)
    y = common.relu(y, f"{name}_relu2")
    if dropout_rate > 0:
        y = layers.Dropout(dropout_rate, name=f"{name}_dropout")(y)
    y = common.conv(y, filters, 3, 1, f"{name}_conv2", **kwargs)
    return layers.Add(name=output_name or f"{name}_out")([shortcut, y])


def cifar_wide_resnet(
    depth,
    widen_factor,
    num_classes=100,
    input_shape=(32, 32, 3),
    dropout_rate=0.0,
    weight_decay=0.0,
    data_format=None,
    name="cifar_wide_resnet",
):
    """Builds a CIFAR WRN-`depth`-`widen_factor` as a flat functional model.

    Args:
        depth: int. `6n + 4`: `n` pre-activation blocks per stage.
        widen_factor: int. `k`: the stages have `16k`, `32k`, `64k` channels.
        dropout_rate: float in `[0, 1)`. Dropout inside every block; 0 (no
            layer) in RepDistiller/CRD.
        num_classes: int. Size of the logits.
        input_shape: Shape of one image, at least 8x8 (the head pools
            globally).
        weight_decay: float. `L2(weight_decay / 2)` on every kernel, as
            PyTorch SGD's `weight_decay` (see `cifar_resnet`).
        data_format: `None` (the Keras config), `"channels_last"` or
            `"channels_first"`.
        name: str. The model's name.

    Returns:
        A `keras.Model` mapping images to logits (no softmax).

    Example:

    ```python
    import numpy as np
    from keras_edu.models.wide_resnet import cifar_wide_resnet

    model = cifar_wide_resnet(16, 2, num_classes=10)
    model.predict(np.zeros((2, 32, 32, 3), "float32"), verbose=0).shape
    # (2, 10)
    ```
    """
    common.check_depth(depth, offset=4, examples="10, 16, 22, 28, 40")
    if not isinstance(widen_factor, numbers.Integral) or (
        widen_factor < 1
    ):
        raise ValueError(
            "`widen_factor` must be a positive integer. "
            f"Received: widen_factor={widen_factor!r}."
        )
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(
            "`dropout_rate` must be in [0, 1). "
            f"Received: dropout_rate={dropout_rate!r}."
        )
    return common.residual_network(
        _stem,
        functools.partial(apply_preact_block, dropout_rate=dropout_rate),
        _head,
        [16 * widen_factor, 32 * widen_factor, 64 * widen_factor],
        (depth - 4) // 6,
        num_classes,
        input_shape,
        weight_decay,
        data_format,
        name,
    )


def _stem(inputs, weight_decay, data_format):
    # Pre-activation: the first block normalises the stem's output.
    return common.conv(inputs, 16, 3, 1, "stem_conv", weight_decay, data_format)


def _head(x, num_classes, weight_decay, data_format):
    # The last block's sum has not been normalised yet (pre-activation), so
    # the head starts with the final BN + ReLU.
    x = common.batch_norm(x, "head_bn", data_format)
    x = common.relu(x, "head_relu")
    return common.classifier(x, num_classes, weight_decay, data_format)


# The named architectures: name -> (label, depth, widen_factor).
CONFIGS = {
    "wrn_16_1": ("WRN-16-1", 16, 1),
    "wrn_16_2": ("WRN-16-2", 16, 2),
    "wrn_40_1": ("WRN-40-1", 40, 1),
    "wrn_40_2": ("WRN-40-2", 40, 2),
}


def _build(arch, **arguments):
    _, depth, widen_factor = CONFIGS[arch]
    return cifar_wide_resnet(depth, widen_factor, **arguments)


# One template for the named builders, as keras.applications does.
BUILDER_DOCSTRING = """{label} for CIFAR, RepDistiller's `{arch}`.

    A 16-channel stem, then three stages of {blocks} pre-activation block(s)
    of widths {stages}, and a BN-ReLU-pool-Dense head. See
    `keras_edu.models.wide_resnet.cifar_wide_resnet` for the layer layout
    and for dropout.

""" + common.BUILDER_ARGS_DOCSTRING


def _docstring(arch):
    _, depth, widen_factor = CONFIGS[arch]
    return BUILDER_DOCSTRING.format(
        label=CONFIGS[arch][0],
        arch=arch,
        blocks=(depth - 4) // 6,
        stages="/".join(str(w * widen_factor) for w in (16, 32, 64)),
    )


# The named builders, generated from `CONFIGS` (signatures in
# `keras_edu.models.common.named_builders`).
BUILDERS = common.named_builders(__name__, CONFIGS, _build, _docstring)
wrn_16_1 = BUILDERS["wrn_16_1"]
wrn_16_2 = BUILDERS["wrn_16_2"]
wrn_40_1 = BUILDERS["wrn_40_1"]
wrn_40_2 = BUILDERS["wrn_40_2"]
