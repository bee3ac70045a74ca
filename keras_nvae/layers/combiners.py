"""How top-down features enter the encoder and latent samples enter the decoder."""

import keras
import tensorflow as tf

from keras_nvae.layers.conv import Conv2D


@keras.saving.register_keras_serializable(package="keras_nvae")
class EncoderCombiner(keras.layers.Layer):
    """`bottom_up + Conv1x1(top_down)`: NVAE's bidirectional-inference combiner.

    Args:
        filters: channels of the bottom-up (encoder) feature.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    ```python
    combiner = keras_nvae.layers.EncoderCombiner(16)
    y = combiner(tf.zeros((2, 8, 8, 16)), tf.zeros((2, 8, 8, 32)))
    ```
    """

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.conv = Conv2D(filters, 1, use_bias=True, name="conv")

    def build(self, bottom_up_shape, top_down_shape=None):
        self.conv.build(tuple(top_down_shape))

    def call(self, bottom_up, top_down):
        return bottom_up + self.conv(top_down)

    def get_config(self):
        config = super().get_config()
        config.update({"filters": self.filters})
        return config


@keras.saving.register_keras_serializable(package="keras_nvae")
class DecoderCombiner(keras.layers.Layer):
    """`Conv1x1(concat[state, z])`: how a latent sample enters the decoder.

    Args:
        filters: output channels (the decoder width at this scale).
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    ```python
    combiner = keras_nvae.layers.DecoderCombiner(16)
    y = combiner(tf.zeros((2, 8, 8, 16)), tf.zeros((2, 8, 8, 20)))
    ```
    """

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.conv = Conv2D(filters, 1, use_bias=True, name="conv")

    def build(self, state_shape, latent_shape=None):
        state_shape = tuple(state_shape)
        self.conv.build(state_shape[:-1] + (state_shape[-1] + tuple(latent_shape)[-1],))

    def call(self, state, latent):
        return self.conv(tf.concat([state, tf.cast(latent, state.dtype)], axis=-1))

    def get_config(self):
        config = super().get_config()
        config.update({"filters": self.filters})
        return config
