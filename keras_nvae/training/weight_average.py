"""An exponential moving average of a model's weights, kept in variables beside them."""

import contextlib

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="keras_nvae")
class WeightAverage(keras.layers.Layer):
    """Exponential moving average (EMA) of a list of weights.

    After each applied training step, `average = decay * average + (1 -
    decay) * weight`; the first applied step copies the weights. The averages
    are this layer's (non-trainable) variables, so a model that holds the
    layer saves them in `.keras` files and checkpoints. Unlike Keras'
    `use_ema`, the weights themselves are never overwritten: `swapped_in`
    puts the averages into them for a while (evaluation, sampling, export).

    The layer does not keep the weights it averages: `build`, `update` and
    `swapped_in` take the same list every time (e.g. the model's
    `trainable_variables`).

    Args:
        decay: the average's decay per applied step, in [0, 1).
        **kwargs: base `keras.layers.Layer` arguments.

    Example:

    >>> average = WeightAverage(0.999)
    >>> average.build(model.trainable_variables)
    >>> average.update(model.trainable_variables, applied=tf.constant(True))
    >>> with average.swapped_in(model.trainable_variables):
    ...     model.evaluate(data)
    """

    def __init__(self, decay=0.9999, **kwargs):
        super().__init__(**kwargs)
        self.decay = float(decay)

    def build(self, variables):
        """Create one average per weight, starting at the weight's value.

        Args:
            variables: the weights to average (floating Keras variables).
        """
        if self.built:
            return
        self.averages = [
            self.add_weight(
                name=variable.path.replace("/", "."),
                shape=variable.shape,
                dtype=variable.dtype,
                initializer=_value_of(variable),
                trainable=False,
                autocast=False,
                aggregation="only_first_replica",
            )
            for variable in variables
        ]
        self.applied_steps = self.add_weight(
            name="applied_steps",
            shape=(),
            dtype="int64",
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
        )

    def update(self, variables, applied):
        """Move the averages towards `variables` if `applied` is true.

        Args:
            variables: the weights, in `build`'s order.
            applied: bool scalar tensor; when false nothing changes.
        """
        decay = tf.where(self.applied_steps > 0, self.decay, 0.0)
        decay = tf.where(applied, decay, 1.0)
        for average, variable in zip(self.averages, variables):
            value = tf.cast(tf.convert_to_tensor(variable), average.dtype)
            average.assign(tf.convert_to_tensor(average) * decay + value * (1.0 - decay))
        self.applied_steps.assign_add(tf.cast(applied, "int64"))

    @contextlib.contextmanager
    def swapped_in(self, variables):
        """Hold the averages in `variables` inside the `with` block (eagerly).

        Before any applied step the averages are not yet defined and the
        weights stay as they are.

        Args:
            variables: the weights, in `build`'s order.
        """
        if not int(keras.ops.convert_to_numpy(self.applied_steps)):
            yield
            return
        own = [keras.ops.convert_to_numpy(variable) for variable in variables]
        for variable, average in zip(variables, self.averages):
            variable.assign(average)
        try:
            yield
        finally:
            for variable, value in zip(variables, own):
                variable.assign(value)

    def get_build_config(self):
        # Built from the model's weights, which the model itself rebuilds.
        return None

    def get_config(self):
        config = super().get_config()
        config.update({"decay": self.decay})
        return config


def _value_of(variable):
    """An initializer that returns `variable`'s current value."""

    def initializer(shape, dtype=None):
        return tf.identity(tf.convert_to_tensor(variable))

    return initializer
