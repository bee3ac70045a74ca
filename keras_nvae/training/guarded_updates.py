"""The guarded half of NVAE's training step: skipped bad steps, clipping, the weight average."""

import contextlib

import keras
import tensorflow as tf

from keras_nvae.training import step_guard
from keras_nvae.training.weight_average import WeightAverage


class GuardedUpdates:
    """How `NVAETrainer` applies an update: a mixin for it.

    A step whose loss, terms or gradients are non-finite, or (with
    `grad_skip_norm`) whose gradient is too large, changes nothing: the
    optimizer is not applied, `global_step` does not advance, and the BN
    moving statistics and power-iteration vectors that the forward pass
    updated are put back. `fit` stops with
    `keras_nvae.step_guard.NonFiniteTrainingError` after
    `max_consecutive_nonfinite` non-finite steps in a row. With `ema_decay`,
    a `WeightAverage` follows the weights and `evaluate` (and validation in
    `fit`) and `sample` use it.

    The host class provides `config`, `optimizer`, `global_step`,
    `trainable_variables`, `num_groups`, `spectral_regularizer` and
    `_bn_layers`, and calls `_build_guard` when it is built.
    """

    def _build_guard(self):
        """Create the step guard and, with `ema_decay`, the weight average."""
        c = self.config
        self.step_guard = step_guard.StepGuard(
            clip_norm=c.grad_clip_norm, skip_norm=c.grad_skip_norm, name="step_guard"
        )
        self.step_guard.build()
        self.weight_average = None
        if c.ema_decay:
            self.weight_average = WeightAverage(c.ema_decay, name="weight_average")
            self.weight_average.build(self.trainable_variables)

    def fit(self, *args, callbacks=None, **kwargs):
        monitor = step_guard.NonFiniteStepMonitor(
            self.config.max_consecutive_nonfinite, self.describe_nonfinite
        )
        return super().fit(*args, callbacks=[*(callbacks or []), monitor], **kwargs)

    def evaluate(self, *args, **kwargs):
        with self.averaged_weights():
            return super().evaluate(*args, **kwargs)

    def sample(self, *args, **kwargs):
        """`NVAEInference.sample`, with the weight average when `ema_decay` is set."""
        with self.averaged_weights():
            return super().sample(*args, **kwargs)

    def averaged_weights(self):
        """Context manager that holds the weight average (`ema_decay`) in the weights.

        Without `ema_decay` (or before the first training step) it changes
        nothing, and so it does inside a traced function. `evaluate` (also
        validation in `fit`), `evaluation.bits_per_dim`, `sample` and `export`
        use it.

        Returns:
            A context manager.

        Example:

        >>> with model.averaged_weights():
        ...     images = model.reconstruct(batch)
        """
        if self.weight_average is None or not tf.executing_eagerly():
            return contextlib.nullcontext()
        return self.weight_average.swapped_in(self.trainable_variables)

    def describe_nonfinite(self):
        """What was non-finite first in the last non-finite step, and what to do.

        Returns:
            `(source, advice)` strings, e.g. `("the input images (NaN or
            infinite pixels)", "Remove or repair ...")`.
        """
        index = int(keras.ops.convert_to_numpy(self.step_guard.first_nonfinite))
        names = self._check_names() + [
            f"the gradient of {variable.path}" for variable in self.trainable_variables
        ]
        if index == 0:
            return names[0], "Remove or repair the images with NaN or infinite pixels."
        source = names[index] if 0 <= index < len(names) else "unknown (no non-finite step)"
        return source, (
            "Lower the learning rate, clip or skip large gradients (grad_clip_norm, "
            "grad_skip_norm), or resume from an earlier checkpoint."
        )

    def bn_moving_variables(self):
        """The moving mean and variance of every BN layer, layer by layer."""
        return [v for layer in self._bn_layers for v in (layer.moving_mean, layer.moving_variance)]

    def _forward_state(self):
        """The variables a training-mode forward pass changes: BN statistics, power iteration."""
        return self.bn_moving_variables() + list(self.spectral_regularizer.variables)

    def _guarded_apply(self, images, terms, grads, before):
        """Apply the update of one step unless `step_guard` skips it.

        Args:
            images: the step's input batch.
            terms: the objective's terms (`compute_objective`).
            grads: the gradients of `trainable_variables`.
            before: the values of `_forward_state()` read before the forward pass.

        Returns:
            Whether the step was finite (bool scalar tensor).
        """
        variables = self.trainable_variables
        optimizer = self.optimizer
        scale = (
            optimizer.dynamic_scale
            if isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
            else None
        )
        checks = self._finiteness_checks(images, terms)
        grads, apply, finite = self.step_guard.inspect(checks, grads, scale)
        step_guard.apply_if(optimizer, apply, grads, variables)
        step_guard.keep_unless(apply, self._forward_state(), before)
        self.global_step.assign_add(tf.cast(apply, "int64"))
        if self.weight_average is not None:
            self.weight_average.update(variables, apply)
        return finite

    def _finiteness_checks(self, images, terms):
        """The values `step_guard` checks before the gradients, named by `_check_names`."""
        pixels = tf.constant(0.0)
        images = tf.convert_to_tensor(images)
        if images.dtype.is_floating:
            pixels = tf.reduce_sum(tf.cast(images, tf.float32) * 0.0)
        recon, spectral, bn, loss = (
            tf.cast(terms[name], tf.float32) for name in ("recon", "spectral", "bn_reg", "loss")
        )
        kl = tf.cast(tf.reduce_sum(terms["kl_per_group"], axis=0), tf.float32)
        return tf.concat([tf.stack([pixels, recon]), kl, tf.stack([spectral, bn, loss])], 0)

    def _check_names(self):
        return [
            "the input images (NaN or infinite pixels)",
            "the reconstruction term",
            *(f"the KL term of latent group {g} (0 = top)" for g in range(self.num_groups)),
            "the spectral regulariser",
            "the BN regulariser",
            "the loss (its terms were finite)",
        ]

    @staticmethod
    def _finite_only(terms, finite, batch_size):
        """Tracker values and weight of a step: a non-finite one adds nothing to the means."""
        values = {name: tf.where(finite, value, 0.0) for name, value in terms.items()}
        return values, batch_size * tf.cast(finite, batch_size.dtype)

    def _guard_logs(self):
        """The counters logged after each training step."""
        guard = self.step_guard
        logs = {"nonfinite_steps": tf.cast(guard.nonfinite_steps, tf.float32)}
        if guard.skip_norm:
            logs["large_gradient_steps"] = tf.cast(guard.large_gradient_steps, tf.float32)
        return logs
