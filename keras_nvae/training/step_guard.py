"""Guarded training steps: a step with a non-finite loss or gradient changes nothing.

`StepGuard` decides, from the finiteness of the objective's terms and of
the gradients, whether a step's update is applied; it can also clip the
gradient's global norm and skip updates whose norm is too large (as VDVAE
does). `apply_if` applies an optimizer update only when the guard allows it,
also under `tf.distribute` strategies, and `keep_unless` puts back state that
the forward pass changed (BN statistics, power-iteration vectors) when it
does not. `NonFiniteStepMonitor` stops `fit` with `NonFiniteTrainingError`
after too many non-finite steps in a row.
"""

import keras
import tensorflow as tf


class NonFiniteTrainingError(RuntimeError):
    """Training met too many consecutive steps with a non-finite loss or gradient."""


@keras.saving.register_keras_serializable(package="keras_nvae")
class StepGuard(keras.layers.Layer):
    """Decides whether a training step is applied and counts the skipped ones.

    A step is *non-finite* when one of its checked values (the objective's
    terms, see `inspect`) or one of its gradients is NaN or infinite; it is
    skipped and counted in `nonfinite_steps`, and `consecutive_nonfinite`
    counts them in a row. `first_nonfinite` holds the position of the first
    non-finite value of the last such step (checked values first, then one
    position per gradient). With `skip_norm`, a finite step whose gradient
    global norm exceeds it is skipped too and counted in `large_gradient_steps`.
    Under a `tf.distribute` strategy the values of all replicas are summed
    first, so all replicas decide alike.

    Args:
        clip_norm: clip the gradient to this global norm (0: no clipping).
        skip_norm: skip updates whose global gradient norm, before clipping,
            exceeds this (0: never).
        **kwargs: base `keras.layers.Layer` arguments.

    Example:

    >>> guard = StepGuard(clip_norm=100.0)
    >>> guard.build()
    >>> grads, apply, finite = guard.inspect(tf.constant([1.0]), [tf.ones((2,))])
    """

    def __init__(self, clip_norm=0.0, skip_norm=0.0, **kwargs):
        super().__init__(**kwargs)
        self.clip_norm = float(clip_norm)
        self.skip_norm = float(skip_norm)

    def build(self, input_shape=None):
        if self.built:
            return
        for name, initial in (
            ("nonfinite_steps", 0),
            ("consecutive_nonfinite", 0),
            ("first_nonfinite", -1),
            ("large_gradient_steps", 0),
        ):
            variable = self.add_weight(
                name=name,
                shape=(),
                dtype="int64",
                initializer=keras.initializers.Constant(initial),
                trainable=False,
                aggregation="only_first_replica",
            )
            setattr(self, name, variable)

    def load_own_variables(self, store):
        # Files written before the guard existed have no counters: keep zeros.
        if len(store.keys()):
            super().load_own_variables(store)

    def inspect(self, checks, grads, loss_scale=None):
        """Decide whether this step's update is applied, and count it.

        Args:
            checks: float vector of values that must be finite (e.g. the
                objective's terms), in the order `first_nonfinite` counts them.
            grads: the gradients (one tensor per variable).
            loss_scale: the loss-scale optimizer's current scale, or None.
                Scaled gradients that overflow while the scale is above 1 are
                left to that optimizer (it skips the step and lowers the
                scale) and not counted.

        Returns:
            `(grads, apply, finite)`: the gradients (clipped when
            `clip_norm`), whether to apply the update (bool scalar), and
            whether the step was finite (bool scalar).
        """
        checks = tf.cast(tf.reshape(checks, (-1,)), tf.float32)
        squares = [
            tf.constant(0.0) if g is None else tf.reduce_sum(tf.square(tf.cast(g, tf.float32)))
            for g in grads
        ]
        measured = tf.concat([checks, tf.stack(squares)], 0)
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        if replicas > 1:
            measured = context.all_reduce(tf.distribute.ReduceOp.SUM, measured)
        counted = tf.math.is_finite(measured)
        terms = checks.shape[0]
        if loss_scale is not None:
            left_to_scaler = tf.cast(loss_scale, tf.float32) > 1.0
            counted = tf.concat([counted[:terms], counted[terms:] | left_to_scaler], 0)
        finite = tf.reduce_all(counted)
        apply = finite
        if self.clip_norm or self.skip_norm:
            grads, norm = self._clip(grads, measured[terms:], replicas, loss_scale)
            if self.skip_norm:
                large = finite & tf.math.is_finite(norm) & (norm > self.skip_norm)
                apply = finite & ~large
                self.large_gradient_steps.assign_add(tf.cast(large, "int64"))
        self._count(finite, counted)
        return grads, apply, finite

    def _clip(self, grads, squares, replicas, loss_scale):
        """Clip `grads` to `clip_norm`; returns (grads, global norm before clipping).

        Under several replicas the norm is that of the summed gradient, so the
        gradients are all-reduced here and divided by the replica count: the
        optimizer's own all-reduce then sums them back to the same total.
        """
        present = [i for i, g in enumerate(grads) if g is not None]
        grads = list(grads)
        if replicas > 1:
            context = tf.distribute.get_replica_context()
            summed = context.all_reduce(tf.distribute.ReduceOp.SUM, [grads[i] for i in present])
            norm = tf.linalg.global_norm(summed)
            for i, g in zip(present, summed):
                grads[i] = g / replicas
        else:
            norm = tf.sqrt(tf.reduce_sum(squares))
        if loss_scale is not None:
            norm = norm / tf.cast(loss_scale, tf.float32)
        if self.clip_norm:
            factor = tf.minimum(1.0, self.clip_norm / tf.maximum(norm, 1e-30))
            for i in present:
                grads[i] = grads[i] * tf.cast(factor, grads[i].dtype)
        return grads, norm

    def _count(self, finite, counted):
        bad = tf.cast(~finite, "int64")
        self.nonfinite_steps.assign_add(bad)
        self.consecutive_nonfinite.assign((self.consecutive_nonfinite + bad) * bad)
        first = tf.argmin(tf.cast(counted, tf.int32), output_type=tf.int64)
        self.first_nonfinite.assign(tf.where(finite, self.first_nonfinite, first))

    def get_config(self):
        config = super().get_config()
        config.update({"clip_norm": self.clip_norm, "skip_norm": self.skip_norm})
        return config


def apply_if(optimizer, apply, grads, variables):
    """`optimizer.apply(grads, variables)` when `apply` is true, else nothing.

    The optimizer's variables (slots, iteration counter) and `variables` are
    untouched when `apply` is false. Under strategies whose optimizer update
    calls `merge_call`, the condition runs in cross-replica context (the way
    `keras.optimizers.LossScaleOptimizer` does it), since a `tf.cond` in
    replica context cannot have such a branch; `apply` must then be equal on
    all replicas (as `StepGuard.inspect` makes it).

    Args:
        optimizer: a built Keras optimizer.
        apply: bool scalar tensor.
        grads: the gradients.
        variables: the variables they belong to.
    """

    def update():
        optimizer.apply(grads, variables)
        return tf.constant(True)

    if tf.__internal__.distribute.strategy_supports_no_merge_call():
        tf.cond(apply, update, lambda: tf.constant(False))
        return

    def cross_replica(distribution, apply, grads):
        first = distribution.experimental_local_results(apply)[0]

        def update_each_replica():
            distribution.extended.call_for_each_replica(
                optimizer.apply, args=(grads, variables)
            )
            return tf.constant(True)

        tf.cond(first, update_each_replica, lambda: tf.constant(False))

    tf.distribute.get_replica_context().merge_call(cross_replica, args=(apply, grads))


def keep_unless(apply, variables, before):
    """Put the values `before` back into `variables` unless `apply` is true.

    Args:
        apply: bool scalar tensor.
        variables: variables the step may have changed.
        before: their values (tensors) read before the step.
    """
    for variable, value in zip(variables, before):
        variable.assign(tf.where(apply, tf.convert_to_tensor(variable), value))


class NonFiniteStepMonitor(keras.callbacks.Callback):
    """Raise `NonFiniteTrainingError` after `limit` non-finite steps in a row.

    `NVAE.fit` adds it. The error is raised from the batch's end, so no
    checkpoint callback saves after it, and the model holds the weights of
    the last good step (the non-finite ones were skipped).

    Args:
        limit: consecutive non-finite steps that stop training (0: never).
        describe: callable returning `(source, advice)`: what the first
            non-finite value of the last non-finite step was, and what to do.

    Example:

    >>> monitor = NonFiniteStepMonitor(10, model.describe_nonfinite)
    """

    def __init__(self, limit, describe):
        super().__init__()
        self.limit = int(limit)
        self.describe = describe

    def on_train_batch_end(self, batch, logs=None):
        if not self.limit:
            return
        guard = self.model.step_guard
        streak = int(keras.ops.convert_to_numpy(guard.consecutive_nonfinite))
        if streak < self.limit:
            return
        step = int(keras.ops.convert_to_numpy(self.model.global_step))
        source, advice = self.describe()
        raise NonFiniteTrainingError(
            f"Training stopped: {streak} steps in a row had a non-finite loss or gradient "
            f"(max_consecutive_nonfinite={self.limit}); in the last one the first non-finite "
            f"value was {source}. These steps were skipped, so the weights, "
            "optimizer state and BN statistics are those of the last good step "
            f"(global_step {step}), and checkpoints written so far are intact. {advice}"
        )
