"""`HintRegressor`: the trainable 1x1 convolution of a hint (FitNets)."""

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="keras_edu")
class HintRegressor(layers.Layer):
    """Maps a student feature map to a teacher map's channel count.

    A 1x1 convolution with no activation (a linear map of the channel
    axis at every position): `(batch, H, W, C_s) -> (batch, H, W, channels)`.
    Its output and the teacher's map go to `keras_edu.losses.HintLoss`.
    Any rank >= 2 works (channels last), e.g. pooled `(batch, C_s)` vectors.

    The regressor is a layer, separate from the (stateless) loss, so it is
    trained like any other weight once a model or `keras_edu.Distiller`
    tracks it, and saved with it in `.keras` files.

    It follows the dtype policy like the student's own convolutions (under
    `"mixed_bfloat16"` it computes in bfloat16 with a float32 kernel);
    `HintLoss` casts to float32. Pass `dtype="float32"` to keep it in float32.

    Args:
        channels: Output channels (the teacher map's channel count).
        use_bias: Whether to add a bias (default False, as in the AMTML-KD
            reference code; the loss normalises each position's vector, so
            the scale of the kernel does not matter).
        kernel_initializer: Initializer of the `(C_s, channels)` kernel
            (default `"glorot_uniform"`, the Keras convolution default).
        bias_initializer: Initializer of the bias (default `"zeros"`).
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Example:

    ```python
    import numpy as np
    import keras_edu.layers.hint_regressor as hr

    regressor = hr.HintRegressor(channels=64)
    student_map = np.random.rand(2, 8, 8, 16).astype("float32")
    regressor(student_map).shape  # (2, 8, 8, 64)
    ```
    """

    def __init__(
        self,
        channels,
        use_bias=False,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(
                "`channels` must be a positive integer. Received: "
                f"channels={channels!r}."
            )
        self.channels = channels
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, input_shape):
        if len(input_shape) < 2 or input_shape[-1] is None:
            raise ValueError(
                "HintRegressor expects a channels-last feature map with a "
                f"known channel count. Received: input_shape={input_shape}."
            )
        self.kernel = self.add_weight(
            shape=(int(input_shape[-1]), self.channels),
            initializer=self.kernel_initializer,
            name="kernel",
        )
        self.bias = (
            self.add_weight(
                shape=(self.channels,),
                initializer=self.bias_initializer,
                name="bias",
            )
            if self.use_bias
            else None
        )

    def call(self, inputs):
        # A 1x1 convolution is a matmul over the channel axis.
        x = ops.matmul(inputs, self.kernel)
        if self.bias is not None:
            x = x + self.bias
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.channels,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "channels": self.channels,
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config
