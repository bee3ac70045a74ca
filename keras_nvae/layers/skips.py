"""Skip connections of NVAE's down- and up-sampling residual cells."""

import keras
import tensorflow as tf

from keras_nvae.layers.cell_ops import upsample_bilinear_align_corners
from keras_nvae.layers.conv import Conv2D


@keras.saving.register_keras_serializable(package="keras_nvae")
class FactorizedReduce(keras.layers.Layer):
    """Swish, then four 1x1 stride-2 convolutions on shifted inputs, concatenated.

    The skip of down-sampling cells: outputs `filters` channels (C/4, C/4, C/4
    and C - 3 C/4) at half the resolution.

    Args:
        filters: output channels.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    ```python
    skip = keras_nvae.layers.FactorizedReduce(32)
    y = skip(tf.zeros((2, 8, 8, 16)))  # (2, 4, 4, 32)
    ```
    """

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        quarter = self.filters // 4
        widths = (quarter, quarter, quarter, self.filters - 3 * quarter)
        self.convs = [
            Conv2D(w, 1, strides=2, padding=0, use_bias=True, name=f"conv_{i + 1}")
            for i, w in enumerate(widths)
        ]

    def build(self, input_shape):
        for conv in self.convs:
            conv.build(tuple(input_shape))

    def call(self, inputs):
        x = tf.nn.silu(inputs)
        shifted = (x, x[:, 1:, 1:, :], x[:, :, 1:, :], x[:, 1:, :, :])
        return tf.concat([conv(t) for conv, t in zip(self.convs, shifted)], axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update({"filters": self.filters})
        return config


@keras.saving.register_keras_serializable(package="keras_nvae")
class UpsampleSkip(keras.layers.Layer):
    """Bilinear x2 up-sampling (align_corners) then a weight-normalised 1x1 conv.

    The skip of up-sampling cells (no bias, as in the official code).

    Args:
        filters: output channels.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    ```python
    skip = keras_nvae.layers.UpsampleSkip(8)
    y = skip(tf.zeros((2, 4, 4, 16)))  # (2, 8, 8, 8)
    ```
    """

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.conv = Conv2D(filters, 1, name="conv")

    def build(self, input_shape):
        self.conv.build(tuple(input_shape))

    def call(self, inputs):
        return self.conv(upsample_bilinear_align_corners(inputs))

    def get_config(self):
        config = super().get_config()
        config.update({"filters": self.filters})
        return config
