"""`TeachingReference`: the temporary classifier on top of a partial student."""

import keras
from keras import layers


@keras.saving.register_keras_serializable(package="keras_edu")
class TeachingReference(layers.Layer):
    """A teaching-reference (TR) block: turns a feature map into class logits.

    In education distillation the student grows one stage per grade. Until
    the last grade, the partial student is topped by a TR block that maps
    its feature map to the logits of the classes seen so far:

        1x1 conv (no bias) to `width` -> BatchNorm -> ReLU
            -> global average pooling -> Dense(num_classes)

    Global pooling makes the block work at any spatial size. The block of
    the last grade is the target architecture's own head, not this layer.

    Args:
        num_classes: Number of logits (classes seen at this grade).
        width: Channels of the 1x1 convolution. `None` (default) keeps the
            input's channel count; `GradedStudent` passes the width of the
            student's final stage, as the method prescribes.
        kernel_initializer: Initializer of the convolution and dense kernels.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Example:

    ```python
    import numpy as np
    import keras_edu

    block = keras_edu.layers.TeachingReference(num_classes=33, width=64)
    features = np.random.rand(2, 32, 32, 16).astype("float32")
    block(features).shape  # (2, 33)
    ```
    """

    def __init__(
        self, num_classes, width=None, kernel_initializer="he_normal", **kwargs
    ):
        super().__init__(**kwargs)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(
                "`num_classes` must be a positive integer. Received: "
                f"num_classes={num_classes!r}."
            )
        if width is not None and (not isinstance(width, int) or width < 1):
            raise ValueError(
                f"`width` must be a positive integer or None. Received: width={width!r}."
            )
        self.num_classes = num_classes
        self.width = width
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                "TeachingReference expects a feature map of shape (batch, "
                f"height, width, channels). Received: input_shape={input_shape}."
            )
        width = self.width or input_shape[-1]
        self.conv = layers.Conv2D(
            width,
            1,
            use_bias=False,
            kernel_initializer=self.kernel_initializer,
            dtype=self.dtype_policy,
            name="conv",
        )
        self.bn = layers.BatchNormalization(
            momentum=0.9, epsilon=1e-5, dtype=self.dtype_policy, name="bn"
        )
        self.pool = layers.GlobalAveragePooling2D(dtype=self.dtype_policy, name="pool")
        self.dense = layers.Dense(
            self.num_classes,
            kernel_initializer=self.kernel_initializer,
            dtype=self.dtype_policy,
            name="logits",
        )
        self.conv.build(input_shape)
        conv_shape = self.conv.compute_output_shape(input_shape)
        self.bn.build(conv_shape)
        self.dense.build((input_shape[0], width))

    def call(self, inputs, training=None):
        x = self.conv(inputs)
        x = self.bn(x, training=training)
        x = keras.ops.relu(x)
        return self.dense(self.pool(x))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "width": self.width,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
            }
        )
        return config
