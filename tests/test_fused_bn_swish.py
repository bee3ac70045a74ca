"""The BN - Swish - conv with a recomputing gradient: autodiff's values and gradients."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from harness import lean_tiny, loss_and_gradients
from keras_nvae.layers import cell_ops
from keras_nvae.layers.cell_ops import BNSwishConv, InvertedResidual, upsample_nearest
from keras_nvae.layers.fused import bn_swish_consumer, fused_activation_consumer

# One float32 computation, its gradient summed in another order: <= 1e-6 relative measured on
# these shapes; ten times that. bfloat16 has an 8-bit mantissa (relative rounding 2^-8 = 4e-3)
# and both paths round the same ops, so they differ only where a recomputed bf16 value rounds
# differently, below a few ulps: 3e-2 relative to the largest gradient.
FLOAT32_TOL = 1e-5
BF16_TOL = 3e-2


def unfused_bn_swish_consumer(bn, inputs, consumer, cons_params, training=None):
    """The autodiff reference: BN, Swish and the consumer as separate ops."""
    return consumer(tf.nn.silu(bn(inputs, training=training)), *cons_params)


def _assert_close(actual, expected, tol, names):
    floor = tol * max(float(tf.reduce_max(tf.abs(tf.cast(g, tf.float32)))) for g in expected)
    for name, a, b in zip(names, actual, expected):
        assert a is not None, name
        np.testing.assert_allclose(
            np.asarray(tf.cast(a, tf.float32)), np.asarray(tf.cast(b, tf.float32)),
            rtol=tol, atol=floor, err_msg=name,
        )


def _grads(op, x, training, monkeypatch=None, fused=True):
    if not fused:
        monkeypatch.setattr(cell_ops, "bn_swish_consumer", unfused_bn_swish_consumer)
    weights = np.arange(1, op.compute_output_shape(x.shape)[-1] + 1, dtype="float32")

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = op(x, training=training)
            loss = tf.reduce_sum(tf.square(tf.cast(y, tf.float32)) * weights)
        return y, tape.gradient(loss, [x] + op.trainable_variables)

    out = step(x)
    if not fused:
        monkeypatch.undo()
    return out


def _paired(make, shape):
    fused, plain = make(), make()
    fused.build(shape)
    plain.build(shape)
    rng = np.random.RandomState(3)
    plain.set_weights([w + 0.1 * rng.randn(*w.shape) for w in fused.get_weights()])
    fused.set_weights(plain.get_weights())
    return fused, plain


OPS = {
    "bnswish_3x3": lambda: BNSwishConv(6),
    "bnswish_3x3_stride2": lambda: BNSwishConv(6, stride=2),
    "bnswish_3x3_upsample": lambda: BNSwishConv(6, upsample=True),
    "mbconv_dw5x5_1x1": lambda: InvertedResidual(4, expansion=3),
    "mbconv_upsample": lambda: InvertedResidual(4, expansion=3, upsample=True),
}


@pytest.mark.parametrize("training", [True, False], ids=["train", "infer"])
@pytest.mark.parametrize("name", sorted(OPS))
def test_op_matches_autodiff(name, training, monkeypatch):
    shape = (2, 6, 6, 4)
    fused, plain = _paired(OPS[name], shape)
    x = tf.constant(np.random.RandomState(0).randn(*shape).astype("float32"))
    stats_before = [w.numpy() for w in plain.non_trainable_weights]
    y_fused, g_fused = _grads(fused, x, training)
    y_plain, g_plain = _grads(plain, x, training, monkeypatch, fused=False)
    # The same ops in the same order forward: equal to the bit.
    np.testing.assert_array_equal(y_fused.numpy(), y_plain.numpy())
    names = ["x"] + [v.path for v in plain.trainable_variables]
    _assert_close(g_fused, g_plain, FLOAT32_TOL, names)
    # The running statistics were moved once, as by the separate BN layers.
    for a, b in zip(fused.non_trainable_weights, plain.non_trainable_weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    moved = [not np.array_equal(w.numpy(), b) for w, b in zip(plain.non_trainable_weights, stats_before)]
    assert all(moved) if training else not any(moved)


@pytest.mark.parametrize("training", [True, False], ids=["train", "infer"])
def test_op_matches_autodiff_in_mixed_bfloat16(training, monkeypatch):
    shape = (2, 6, 6, 4)
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        fused, plain = _paired(lambda: InvertedResidual(4, expansion=3), shape)
        enc_fused, enc_plain = _paired(lambda: BNSwishConv(6, upsample=True), shape)
    finally:
        keras.config.set_dtype_policy("float32")
    x = tf.constant(np.random.RandomState(0).randn(*shape), tf.bfloat16)
    for f, p in ((fused, plain), (enc_fused, enc_plain)):
        y_fused, g_fused = _grads(f, x, training)
        y_plain, g_plain = _grads(p, x, training, monkeypatch, fused=False)
        assert y_fused.dtype == tf.bfloat16
        np.testing.assert_array_equal(y_fused.numpy(), y_plain.numpy())
        assert all(g.dtype == tf.float32 for g in g_fused[1:])
        _assert_close(g_fused, g_plain, BF16_TOL, ["x"] + [v.path for v in p.trainable_variables])


def test_fused_function_keeps_only_its_input_and_params():
    """The gradient recomputes the activation: what the forward pass computed inside is unused."""
    calls = []

    def activation(x, scale):
        calls.append("activation")
        return tf.nn.silu(x * scale), ()

    x = tf.constant([[0.5, -1.0, 2.0]])
    scale = tf.constant([1.5, 0.5, -1.0])
    kernel = tf.constant([[1.0], [2.0], [-3.0]])
    with tf.GradientTape() as tape:
        tape.watch([x, scale, kernel])
        (y,) = fused_activation_consumer(activation, tf.matmul, x, (scale,), (kernel,))
    grads = tape.gradient(y, [x, scale, kernel])
    assert calls == ["activation", "activation"]
    # Closed form: y = sum_j k_j silu(s_j x_j), silu'(u) = sig(u) (1 + u (1 - sig(u))).
    u = x.numpy()[0] * scale.numpy()
    sig = 1 / (1 + np.exp(-u))
    dsilu = sig * (1 + u * (1 - sig))
    k = kernel.numpy()[:, 0]
    np.testing.assert_allclose(grads[0].numpy()[0], k * dsilu * scale.numpy(), rtol=1e-6)
    np.testing.assert_allclose(grads[1].numpy(), k * dsilu * x.numpy()[0], rtol=1e-6)
    np.testing.assert_allclose(grads[2].numpy()[:, 0], u * sig, rtol=1e-6)


def test_depthwise_upsampled_consumer_matches_autodiff():
    """bn_swish_consumer with an up-sampling depthwise 5x5 consumer, against the separate ops."""
    op = InvertedResidual(4, expansion=2)
    op.build((2, 5, 5, 4))
    conv, bn = op.conv_depthwise, op.bn_expand
    x = tf.constant(np.random.RandomState(1).randn(2, 5, 5, 8).astype("float32"))
    kernel = conv.normalized_kernel()

    def consumer(s, k):
        return conv.convolve(upsample_nearest(s), k)

    def grads(fn):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            y = fn(bn, x, consumer, (kernel,), training=True)
            loss = tf.reduce_sum(tf.sin(y))
        return tape.gradient(loss, [x, kernel] + bn.trainable_variables)

    fused = grads(bn_swish_consumer)
    plain = grads(unfused_bn_swish_consumer)
    _assert_close(fused, plain, FLOAT32_TOL, ["x", "kernel", "gamma", "beta"])


@pytest.fixture(scope="module")
def unfused_step():
    """A lean tiny model's weights, inputs and its unfused loss, gradients and statistics."""
    x = np.random.RandomState(0).randint(0, 256, (4, 16, 16, 3)).astype("uint8")
    plain = lean_tiny()
    weights = plain.get_weights()
    rng = np.random.RandomState(1)
    noise = [rng.randn(4, *s).astype("float32") for s in plain.latent_shapes]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cell_ops, "bn_swish_consumer", unfused_bn_swish_consumer)
        loss, grads = loss_and_gradients(plain, x, noise)
    return plain, weights, x, noise, loss, grads


@pytest.mark.parametrize("remat", [False, "cell", "group"])
def test_tiny_model_gradients_match_unfused(unfused_step, remat):
    plain, weights, x, noise, loss_plain, g_plain = unfused_step
    fused = lean_tiny(remat=remat)
    fused.set_weights(weights)
    loss_fused, g_fused = loss_and_gradients(fused, x, noise)
    np.testing.assert_allclose(float(loss_fused), float(loss_plain), rtol=1e-6)
    # float32 sums in another order through the whole model; gradients that are zero up to
    # rounding (biases feeding a training-mode BN) are compared against the largest gradient.
    floor = FLOAT32_TOL * max(float(tf.reduce_max(tf.abs(g))) for g in g_plain)
    for v, a, b in zip(plain.trainable_variables, g_fused, g_plain):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=floor, err_msg=v.path)
    # BN statistics moved once per step, as by the unfused model.
    for a, b in zip(fused.non_trainable_weights, plain.non_trainable_weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7, err_msg=a.path)
