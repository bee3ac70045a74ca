"""Gradient checkpointing: same outputs, gradients and BatchNorm statistics, less kept state."""

import numpy as np
import pytest
import tensorflow as tf

from harness import lean_tiny, loss_and_gradients
from keras_nvae import NVAEConfig
from keras_nvae.layers import ResidualCell
from keras_nvae.layers.latent_group import LatentGroup
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


@pytest.fixture(scope="module")
def plain_step():
    """A lean tiny model with one flow, its weights before and its loss and gradients after one
    training-mode objective with fixed noise."""
    x = np.random.RandomState(0).randint(0, 256, (4, 16, 16, 3)).astype("uint8")
    plain = lean_tiny(num_flows=1)
    weights = plain.get_weights()
    rng = np.random.RandomState(1)
    noise = [rng.randn(4, *s).astype("float32") for s in plain.latent_shapes]
    loss, grads = loss_and_gradients(plain, x, noise)
    return plain, weights, x, noise, loss, grads


@pytest.mark.parametrize("policy", ["cell", "group"])
def test_remat_policy_trains_like_the_plain_model(plain_step, policy):
    plain, weights, x, noise, loss_plain, grads_plain = plain_step
    remat = lean_tiny(num_flows=1, remat=policy)
    assert all(cell.remat for cell in remat.pre_process + remat.post_process)
    assert all(group.remat == policy for group in remat.groups)
    assert all(cell.remat == (policy == "cell") for cell in remat.groups[1].decoder_cells)
    remat.set_weights(weights)
    loss_remat, grads_remat = loss_and_gradients(remat, x, noise)
    np.testing.assert_allclose(float(loss_remat), float(loss_plain), rtol=1e-6)
    # float32 gradients summed in another order. Some are zero up to rounding
    # (biases feeding a training-mode BN), so the absolute floor is relative to
    # the largest gradient of all.
    floor = 1e-5 * max(float(tf.reduce_max(tf.abs(g))) for g in grads_plain)
    for v, a, b in zip(plain.trainable_variables, grads_remat, grads_plain):
        assert a is not None, v.path
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=floor, err_msg=v.path)
    # BN moving statistics and the power-iteration vectors were updated once, not twice.
    assert len(remat.non_trainable_weights) == len(plain.non_trainable_weights)
    for a, b in zip(remat.non_trainable_weights, plain.non_trainable_weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7, err_msg=a.path)


@pytest.mark.parametrize(
    "value, policy", [(False, "none"), ("none", "none"), ("cell", "cell"), ("group", "group"), (True, "group")]
)
def test_remat_values_name_a_policy(value, policy):
    config = NVAEConfig(remat=value)
    assert config.remat_policy == policy
    assert NVAEConfig.from_json(config.to_json()).remat_policy == policy


@pytest.mark.parametrize("value", ["tower", 1, None])
def test_remat_rejects_unknown_policies(value):
    with pytest.raises(ValueError, match="remat must be True, False or one of"):
        NVAEConfig(remat=value)


def test_latent_group_layer_configs_with_a_bool_remat_load():
    # Layer configs saved when remat was a bool meant per-cell recomputation.
    group = LatentGroup.from_config({**LatentGroup(8, 8, 4).get_config(), "remat": True})
    assert group.remat == "cell" and all(cell.remat for cell in group.encoder_cells)
    assert LatentGroup.from_config({**group.get_config(), "remat": False}).remat == "none"
