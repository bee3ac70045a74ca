"""Squeeze-and-excitation channel gating."""

import keras
import numpy as np
import tensorflow as tf

from keras_nvae.layers.initializers import FanInUniform, HostUniform


def _dense(units, fan_in, activation, name):
    bound = 1.0 / np.sqrt(fan_in)
    return keras.layers.Dense(
        units,
        activation=activation,
        kernel_initializer=FanInUniform(),
        bias_initializer=HostUniform(-bound, bound),
        name=name,
    )


@keras.saving.register_keras_serializable(package="keras_nvae")
class SqueezeExcitation(keras.layers.Layer):
    """Squeeze-and-excitation (Hu et al. 2018) as used by NVAE's residual cells.

    Global average over H, W, then Dense(max(C // 16, 4), ReLU), Dense(C,
    sigmoid), and a channel-wise product with the input.

    Args:
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    ```python
    se = keras_nvae.layers.SqueezeExcitation()
    y = se(tf.ones((2, 4, 4, 32)))
    ```
    """

    def build(self, input_shape):
        channels = int(input_shape[-1])
        hidden = max(channels // 16, 4)
        self.squeeze = _dense(hidden, channels, "relu", "squeeze")
        self.excite = _dense(channels, hidden, "sigmoid", "excite")
        self.squeeze.build((None, channels))
        self.excite.build((None, hidden))

    def call(self, inputs):
        pooled = tf.reduce_mean(inputs, axis=(1, 2))
        gate = self.excite(self.squeeze(pooled))
        return inputs * gate[:, None, None, :]

    def compute_output_shape(self, input_shape):
        return input_shape
