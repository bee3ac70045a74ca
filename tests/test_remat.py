"""Gradient checkpointing: same outputs, gradients and BatchNorm statistics, less kept state."""

import numpy as np
import pytest
import tensorflow as tf

from harness import lean_tiny
from keras_nvae.layers import ResidualCell
from keras_nvae.layers.remat import is_recomputing, rematerialize


def _cell_pair(cell_type, ops, filters=8, shape=(2, 8, 8, 8)):
    plain = ResidualCell(filters, cell_type, ops, name="plain")
    remat = ResidualCell(filters, cell_type, ops, remat=True, name="remat")
    plain.build(shape)
    remat.build(shape)
    remat.set_weights(plain.get_weights())
    return plain, remat


def _train_grads(cell, x, compiled):
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = cell(x, training=True)
            loss = tf.reduce_sum(tf.square(y) * tf.range(1.0, 9.0))
        return y, tape.gradient(loss, [x] + cell.trainable_variables)

    return tf.function(step)(x) if compiled else step(x)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "graph"])
@pytest.mark.parametrize(
    "cell_type, ops",
    [("normal_dec", ("mbconv_e6",)), ("down_enc", ("bnswish", "bnswish"))],
)
def test_remat_cell_matches_plain_cell(cell_type, ops, compiled):
    plain, remat = _cell_pair(cell_type, ops)
    x = tf.constant(np.random.RandomState(0).randn(2, 8, 8, 8).astype("float32"))
    y_plain, g_plain = _train_grads(plain, x, compiled)
    y_remat, g_remat = _train_grads(remat, x, compiled)
    np.testing.assert_allclose(y_remat.numpy(), y_plain.numpy(), rtol=1e-6, atol=1e-6)
    assert len(g_remat) == len(g_plain) and all(g is not None for g in g_remat)
    # Same ops on the same inputs; only the order of float32 reductions may differ.
    for a, b in zip(g_remat, g_plain):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
    # The moving statistics were updated once (by the forward pass), not twice.
    for a, b in zip(remat.non_trainable_weights, plain.non_trainable_weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


def test_rematerialize_recomputes_in_the_backward_pass():
    calls = []

    def fn(t):
        calls.append(is_recomputing())
        return tf.sin(t) * t

    x = tf.constant([0.3, 1.2])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = rematerialize(fn, x)
    grad = tape.gradient(y, x)
    assert calls == [False, True]
    np.testing.assert_allclose(grad.numpy(), np.cos([0.3, 1.2]) * [0.3, 1.2] + np.sin([0.3, 1.2]), rtol=1e-6)
    assert not is_recomputing()


def test_remat_model_trains_like_the_plain_model():
    x = np.random.RandomState(0).randint(0, 256, (4, 16, 16, 3)).astype("uint8")
    plain = lean_tiny()
    remat = lean_tiny(remat=True)
    assert remat.config.remat and all(
        cell.remat for cell in remat.pre_process + remat.post_process
    )
    remat.set_weights(plain.get_weights())
    rng = np.random.RandomState(1)
    noise = [rng.randn(4, *s).astype("float32") for s in plain.latent_shapes]

    def loss_and_grads(model):
        @tf.function
        def step(images, eps):
            with tf.GradientTape() as tape:
                terms = model.compute_objective(images, training=True, noise=eps)
            return terms["loss"], tape.gradient(terms["loss"], model.trainable_variables)

        return step(tf.constant(x), [tf.constant(n) for n in noise])

    loss_plain, grads_plain = loss_and_grads(plain)
    loss_remat, grads_remat = loss_and_grads(remat)
    np.testing.assert_allclose(float(loss_remat), float(loss_plain), rtol=1e-6)
    # float32 gradients summed in another order. Some are zero up to rounding
    # (biases feeding a training-mode BN), so the absolute floor is relative to
    # the largest gradient of all.
    floor = 1e-5 * max(float(tf.reduce_max(tf.abs(g))) for g in grads_plain)
    for v, a, b in zip(plain.trainable_variables, grads_remat, grads_plain):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=floor, err_msg=v.path)
    for a, b in zip(remat._bn_layers, plain._bn_layers):
        np.testing.assert_allclose(a.moving_mean.numpy(), b.moving_mean.numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(a.moving_variance.numpy(), b.moving_variance.numpy(), rtol=1e-5)
