"""Batch normalisation with NVAE's (PyTorch) conventions, synchronised across replicas."""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="keras_nvae")
class BatchNorm(keras.layers.Layer):
    """Batch normalisation over N, H, W with PyTorch running-statistics semantics.

    Differences from `keras.layers.BatchNormalization` that matter for NVAE:
    the running variance is updated with the *unbiased* batch variance (as
    PyTorch does, so official checkpoints and statistics match), the default
    momentum is 0.95 (PyTorch 0.05) and epsilon 1e-5, and under a
    `tf.distribute` strategy with several replicas the batch statistics are
    computed over the global batch (synchronised BN, as the official code).
    Statistics are always computed in float32.

    Args:
        momentum: float, Keras convention (`moving = momentum * moving + (1 -
            momentum) * batch`).
        epsilon: float.
        synchronized: bool, all-reduce statistics across replicas.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    ```python
    bn = keras_nvae.layers.BatchNorm()
    y = bn(tf.random.normal((4, 8, 8, 16)), training=True)
    ```
    """

    def __init__(self, momentum=0.95, epsilon=1e-5, synchronized=True, **kwargs):
        super().__init__(**kwargs)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.synchronized = synchronized

    def build(self, input_shape):
        if self.built:
            return
        channels = int(input_shape[-1])
        # Parameters and statistics stay float32 under mixed precision.
        self.gamma = self.add_weight(
            name="gamma", shape=(channels,), initializer="ones", autocast=False
        )
        self.beta = self.add_weight(
            name="beta", shape=(channels,), initializer="zeros", autocast=False
        )
        self.moving_mean = self.add_weight(
            name="moving_mean",
            shape=(channels,),
            initializer="zeros",
            trainable=False,
            autocast=False,
            aggregation="mean",
        )
        self.moving_variance = self.add_weight(
            name="moving_variance",
            shape=(channels,),
            initializer="ones",
            trainable=False,
            autocast=False,
            aggregation="mean",
        )

    def _batch_moments(self, x):
        """Mean, biased variance and element count per channel (float32)."""
        x = tf.cast(x, tf.float32)
        count = tf.cast(tf.size(x) // tf.shape(x)[-1], tf.float32)
        total = tf.reduce_sum(x, axis=(0, 1, 2))
        total_sq = tf.reduce_sum(tf.square(x), axis=(0, 1, 2))
        context = tf.distribute.get_replica_context()
        if (
            self.synchronized
            and context is not None
            and context.num_replicas_in_sync > 1
        ):
            total, total_sq, count = context.all_reduce(
                tf.distribute.ReduceOp.SUM, [total, total_sq, count]
            )
            mean = total / count
            variance = tf.maximum(total_sq / count - tf.square(mean), 0.0)
        else:
            mean, variance = tf.nn.moments(x, axes=(0, 1, 2))
        return mean, variance, count

    def call(self, inputs, training=None):
        if training:
            mean, variance, count = self._batch_moments(inputs)
            unbiased = variance * count / tf.maximum(count - 1.0, 1.0)
            m = self.momentum
            self.moving_mean.assign(m * self.moving_mean + (1.0 - m) * mean)
            self.moving_variance.assign(m * self.moving_variance + (1.0 - m) * unbiased)
        else:
            mean = tf.convert_to_tensor(self.moving_mean)
            variance = tf.convert_to_tensor(self.moving_variance)
        scale = tf.convert_to_tensor(self.gamma) * tf.math.rsqrt(variance + self.epsilon)
        shift = tf.convert_to_tensor(self.beta) - mean * scale
        dtype = self.compute_dtype
        return inputs * tf.cast(scale, dtype) + tf.cast(shift, dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "epsilon": self.epsilon,
                "synchronized": self.synchronized,
            }
        )
        return config
