"""Batch normalisation with NVAE's (PyTorch) conventions, synchronised across replicas."""

import keras
import tensorflow as tf

from keras_nvae.layers.conv import RootScopedWeights
from keras_nvae.layers.remat import is_recomputing


@keras.saving.register_keras_serializable(package="keras_nvae")
class BatchNorm(RootScopedWeights, keras.layers.Layer):
    """Batch normalisation over N, H, W with PyTorch running-statistics semantics.

    Differences from `keras.layers.BatchNormalization` that matter for NVAE:
    the running variance is updated with the *unbiased* batch variance (as
    PyTorch does, so official checkpoints and statistics match), the default
    momentum is 0.95 (PyTorch 0.05) and epsilon 1e-5, and under a
    `tf.distribute` strategy with several replicas the batch statistics are
    always computed over the global batch (synchronised BN, as the official
    code). Statistics are always computed in float32.

    Args:
        momentum: float, Keras convention (`moving = momentum * moving + (1 -
            momentum) * batch`).
        epsilon: float.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    ```python
    bn = keras_nvae.layers.BatchNorm()
    y = bn(tf.random.normal((4, 8, 8, 16)), training=True)
    ```
    """

    def __init__(self, momentum=0.95, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)

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

    def _global_moments(self, x):
        """Mean, biased variance and element count per channel over all replicas."""
        x = tf.cast(x, tf.float32)
        count = tf.cast(tf.size(x) // tf.shape(x)[-1], tf.float32)
        total = tf.reduce_sum(x, axis=(0, 1, 2))
        total_sq = tf.reduce_sum(tf.square(x), axis=(0, 1, 2))
        context = tf.distribute.get_replica_context()
        total, total_sq, count = context.all_reduce(
            tf.distribute.ReduceOp.SUM, [total, total_sq, count]
        )
        mean = total / count
        variance = tf.maximum(total_sq / count - tf.square(mean), 0.0)
        return mean, variance, count

    def _synchronizing(self):
        context = tf.distribute.get_replica_context()
        return context is not None and context.num_replicas_in_sync > 1

    def update_moving_statistics(self, mean, unbiased_variance):
        """Moves the running statistics towards a batch's (once per step).

        Args:
            mean: (C,) batch mean.
            unbiased_variance: (C,) Bessel-corrected batch variance.
        """
        if is_recomputing():
            return  # already updated by the forward pass (gradient checkpointing)
        m = self.momentum
        self.moving_mean.assign(m * self.moving_mean + (1.0 - m) * mean)
        self.moving_variance.assign(
            m * self.moving_variance + (1.0 - m) * unbiased_variance
        )

    def uses_fused_kernel(self, training):
        """Whether a `training` call normalises with TF's fused batch-norm op."""
        return bool(training) and not self._synchronizing()

    def fused_normalize(self, inputs, gamma, beta):
        """Training-mode normalisation with the fused op, statistics not updated.

        Args:
            inputs: (N, H, W, C) tensor.
            gamma: (C,) float32 tensor.
            beta: (C,) float32 tensor.

        Returns:
            `(outputs, mean, unbiased_variance)`.
        """
        # Its variance output is Bessel-corrected, the unbiased estimate PyTorch
        # tracks.
        return tf.compat.v1.nn.fused_batch_norm(
            inputs, gamma, beta, epsilon=self.epsilon, is_training=True
        )

    def scale_and_shift(self, inputs, training=None):
        """Per-channel float32 `(scale, shift)` with `bn(x) = x * scale + shift`.

        In training the batch statistics of `inputs` (over all replicas) are
        used and the running statistics updated; otherwise the running ones.

        Args:
            inputs: (N, H, W, C) tensor.
            training: bool.

        Returns:
            Two (C,) float32 tensors.
        """
        if training:
            mean, variance, count = self._global_moments(inputs)
            self.update_moving_statistics(
                mean, variance * count / tf.maximum(count - 1.0, 1.0)
            )
        else:
            mean = tf.convert_to_tensor(self.moving_mean)
            variance = tf.convert_to_tensor(self.moving_variance)
        scale = tf.convert_to_tensor(self.gamma) * tf.math.rsqrt(variance + self.epsilon)
        return scale, tf.convert_to_tensor(self.beta) - mean * scale

    def call(self, inputs, training=None):
        if self.uses_fused_kernel(training):
            # One fused op (and one for its gradient): faster and it keeps less
            # for the backward pass than the composite.
            outputs, mean, unbiased = self.fused_normalize(
                inputs, tf.convert_to_tensor(self.gamma), tf.convert_to_tensor(self.beta)
            )
            self.update_moving_statistics(mean, unbiased)
            return outputs
        scale, shift = self.scale_and_shift(inputs, training)
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
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        # `.keras` files from keras_nvae 0.1.0 record `synchronized` (always True).
        if not config.pop("synchronized", True):
            raise ValueError(
                "BatchNorm always synchronises its statistics across replicas; the "
                "config has synchronized=False. Remove the key or set it to True."
            )
        return super().from_config(config)
