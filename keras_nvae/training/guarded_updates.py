"""The guarded half of NVAE's training step: skipped bad steps, clipping, the weight average."""

import contextlib

import keras
import tensorflow as tf

from keras_nvae.training import step_guard as step_guard_lib
from keras_nvae.training.weight_average import WeightAverage


class GuardedUpdate:
    """Applies a training step's update unless its `StepGuard` skips it.

    A step whose checked values (see `finiteness_checks`) or gradients are
    non-finite, or (with the guard's `skip_norm`) whose gradient is too
    large, changes nothing: the optimizer is not applied, `apply` reports
    it, and the state the forward pass changed (BN moving statistics,
    power-iteration vectors) is put back. With a `WeightAverage`, the
    average follows the weights after every applied step.

    `NVAETrainer` owns one and passes in everything a step involves; the
    object keeps no reference to the model. The guard and the average are
    Keras layers whose variables the model tracks (as `step_guard` and
    `weight_average`), so they are saved with it.

    Args:
        step_guard: a built `StepGuard`.
        weight_average: a built `WeightAverage`, or None for no average.

    Example:

    >>> guard = StepGuard(clip_norm=100.0)
    >>> guard.build()
    >>> update = GuardedUpdate(guard)
    >>> applied, finite = update.apply(
    ...     optimizer, variables, grads, checks, state=[], before=[])
    """

    def __init__(self, step_guard, weight_average=None):
        self.step_guard = step_guard
        self.weight_average = weight_average

    @classmethod
    def from_config(cls, config, variables):
        """The guard (and, with `ema_decay`, the average of `variables`) `config` asks for.

        Args:
            config: an `NVAEConfig` (`grad_clip_norm`, `grad_skip_norm`,
                `ema_decay`).
            variables: the trainable variables the average follows.

        Returns:
            A `GuardedUpdate` with built layers.
        """
        guard = step_guard_lib.StepGuard(
            clip_norm=config.grad_clip_norm, skip_norm=config.grad_skip_norm, name="step_guard"
        )
        guard.build()
        average = None
        if config.ema_decay:
            average = WeightAverage(config.ema_decay, name="weight_average")
            average.build(variables)
        return cls(guard, average)

    def apply(self, optimizer, variables, grads, checks, state, before):
        """Apply `optimizer` to `variables` unless the guard skips the step.

        Args:
            optimizer: the (built) optimizer; its dynamic scale is read when
                it is a `keras.optimizers.LossScaleOptimizer`.
            variables: the trainable variables, in the order of `grads`.
            grads: their gradients.
            checks: float vector of the step's values that must be finite,
                in the order of the names given to `describe_nonfinite`.
            state: variables the forward pass changed.
            before: their values read before the forward pass.

        Returns:
            `(applied, finite)`: whether the update was applied and whether
            the step was finite (bool scalar tensors).
        """
        scale = (
            optimizer.dynamic_scale
            if isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
            else None
        )
        grads, applied, finite = self.step_guard.inspect(checks, grads, scale)
        step_guard_lib.apply_if(optimizer, applied, grads, variables)
        step_guard_lib.keep_unless(applied, state, before)
        if self.weight_average is not None:
            self.weight_average.update(variables, applied)
        return applied, finite

    def averaged_weights(self, variables):
        """A context manager holding the weight average in `variables` (eagerly).

        Without an average, before its first applied step, or inside a traced
        function it changes nothing.

        Args:
            variables: the averaged variables, in the order they were built.

        Returns:
            A context manager.
        """
        if self.weight_average is None or not tf.executing_eagerly():
            return contextlib.nullcontext()
        return self.weight_average.swapped_in(variables)

    def describe_nonfinite(self, check_names, variables):
        """What was non-finite first in the last non-finite step, and what to do.

        Args:
            check_names: what each value of `apply`'s `checks` is; the first
                one names the input images.
            variables: the trainable variables, in the order of the gradients.

        Returns:
            `(source, advice)` strings.
        """
        index = int(keras.ops.convert_to_numpy(self.step_guard.first_nonfinite))
        names = list(check_names) + [f"the gradient of {v.path}" for v in variables]
        if index == 0:
            return names[0], "Remove or repair the images with NaN or infinite pixels."
        source = names[index] if 0 <= index < len(names) else "unknown (no non-finite step)"
        return source, (
            "Lower the learning rate, clip or skip large gradients (grad_clip_norm, "
            "grad_skip_norm), or resume from an earlier checkpoint."
        )

    def logs(self):
        """The guard's counters, logged after each training step (dict of float tensors)."""
        guard = self.step_guard
        logs = {"nonfinite_steps": tf.cast(guard.nonfinite_steps, tf.float32)}
        if guard.skip_norm:
            logs["large_gradient_steps"] = tf.cast(guard.large_gradient_steps, tf.float32)
        return logs


def finiteness_checks(images, terms):
    """The values a step checks before its gradients, named by `check_names`.

    Args:
        images: the step's input batch (its pixels are checked when floating).
        terms: the objective's terms (`NVAE.compute_objective`).

    Returns:
        A float32 vector.
    """
    pixels = tf.constant(0.0)
    images = tf.convert_to_tensor(images)
    if images.dtype.is_floating:
        pixels = tf.reduce_sum(tf.cast(images, tf.float32) * 0.0)
    recon, spectral, bn, loss = (
        tf.cast(terms[name], tf.float32) for name in ("recon", "spectral", "bn_reg", "loss")
    )
    kl = tf.cast(tf.reduce_sum(terms["kl_per_group"], axis=0), tf.float32)
    return tf.concat([tf.stack([pixels, recon]), kl, tf.stack([spectral, bn, loss])], 0)


def check_names(num_groups):
    """What each value of `finiteness_checks` is, for a model with `num_groups` groups."""
    return [
        "the input images (NaN or infinite pixels)",
        "the reconstruction term",
        *(f"the KL term of latent group {g} (0 = top)" for g in range(num_groups)),
        "the spectral regulariser",
        "the BN regulariser",
        "the loss (its terms were finite)",
    ]


def finite_only(terms, finite, batch_size):
    """Tracker values and weight of a step: a non-finite one adds nothing to the means."""
    values = {name: tf.where(finite, value, 0.0) for name, value in terms.items()}
    return values, batch_size * tf.cast(finite, batch_size.dtype)
