"""BN - Swish - convolution with a gradient that keeps only the BN input."""

import tensorflow as tf


def _recompute_gradients(activation, consumer, x, act_params, cons_params, dy):
    """Gradients of `consumer(activation(x, *act_params), *cons_params)`."""
    # The control dependency orders the recomputation after the upstream
    # gradient and keeps graph optimisers from merging it with the forward ops.
    with tf.control_dependencies([dy]):
        x = tf.identity(x)
    with tf.GradientTape() as act_tape:
        act_tape.watch([x, *act_params])
        s = activation(x, *act_params)[0]
    with tf.GradientTape() as cons_tape:
        cons_tape.watch([s, *cons_params])
        # Only the convolution's gradient ops are used; its output is pruned.
        y = consumer(s, *cons_params)
    ds, *d_cons = cons_tape.gradient(y, [s, *cons_params], output_gradients=dy)
    dx, *d_act = act_tape.gradient(s, [x, *act_params], output_gradients=ds)
    return [dx, *d_act, *d_cons]


def fused_activation_consumer(activation, consumer, x, act_params, cons_params):
    """`consumer(activation(x))` that keeps only `x` for the backward pass.

    Autodiff keeps each intermediate tensor that a gradient needs: for
    BN - Swish - Conv that is the BN input, the BN output (the Swish input)
    and the Swish output (the convolution input), three tensors of the size of
    `x`. Here the backward pass recomputes the element-wise `activation` from
    `x` and feeds its result to the convolution's own gradient ops, so one
    tensor is kept instead of three. The gradients are the autodiff ones.

    Args:
        activation: `activation(x, *act_params) -> (s, extras)`, with `extras`
            a tuple of tensors returned alongside (e.g. batch statistics; they
            receive no gradient).
        consumer: `consumer(s, *cons_params) -> y`, e.g. a convolution whose
            gradients do not need its output.
        x: the input tensor.
        act_params: tuple of tensors, e.g. BN's gamma and beta.
        cons_params: tuple of tensors, e.g. the effective kernel.

    Returns:
        `(y, *extras)`.

    Example:
    ```python
    def act(x, scale):
        return tf.nn.silu(x * scale), ()
    (y,) = fused_activation_consumer(act, tf.nn.relu, x, (scale,), ())
    ```
    """
    act_params, cons_params = tuple(act_params), tuple(cons_params)
    n_act = len(act_params)

    @tf.custom_gradient
    def fused(x, *params):
        s, extras = activation(x, *params[:n_act])
        y = consumer(s, *params[n_act:])

        def grad(dy, *unused_extra_grads):
            return _recompute_gradients(
                activation, consumer, x, params[:n_act], params[n_act:], dy
            )

        return (y, *extras), grad

    return fused(x, *act_params, *cons_params)


def bn_swish_consumer(bn, inputs, consumer, cons_params, training=None):
    """`consumer(swish(bn(inputs)), *cons_params)`, keeping only `inputs`.

    The same values as calling `bn` then `tf.nn.silu` then `consumer`; the
    running statistics of `bn` are updated as `bn(inputs, training)` does.

    Args:
        bn: a built `keras_nvae.layers.BatchNorm`.
        inputs: (N, H, W, C) tensor.
        consumer: `consumer(s, *cons_params) -> y`.
        cons_params: tuple of tensors.
        training: bool.

    Returns:
        `y`.
    """
    if bn.uses_fused_kernel(training):

        def activation(x, gamma, beta):
            y, mean, unbiased = bn.fused_normalize(x, gamma, beta)
            return tf.nn.silu(y), (mean, unbiased)

        gamma = tf.convert_to_tensor(bn.gamma)
        beta = tf.convert_to_tensor(bn.beta)
        y, mean, unbiased = fused_activation_consumer(
            activation, consumer, inputs, (gamma, beta), cons_params
        )
        bn.update_moving_statistics(mean, unbiased)
        return y

    def activation(x, scale, shift):
        dtype = x.dtype
        return tf.nn.silu(x * tf.cast(scale, dtype) + tf.cast(shift, dtype)), ()

    scale, shift = bn.scale_and_shift(inputs, training)
    (y,) = fused_activation_consumer(
        activation, consumer, inputs, (scale, shift), cons_params
    )
    return y
