"""Stability options: gradient-norm clipping, skipping large-gradient updates, weight average."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from harness import fixed_noise, lean_tiny, noise_seed_state, tiny_images

from keras_nvae import NVAE
from keras_nvae.config import NVAEConfig

KL_COEFF, REG_COEFF = 0.5, 0.1


@keras.saving.register_keras_serializable(package="test_stability")
class RecordingSGD(keras.optimizers.SGD):
    """SGD that keeps the last gradients it applied (flattened), for eager steps."""

    applied = None

    def apply(self, grads, trainable_variables=None):
        if tf.executing_eagerly():
            self.applied = np.concatenate([np.ravel(g) for g in grads])
        return super().apply(grads, trainable_variables)


def sgd_tiny(learning_rate=0.1, **overrides):
    """A lean tiny NVAE (fixed initial weights) compiled with `RecordingSGD`."""
    keras.utils.set_random_seed(0)
    model = lean_tiny(**overrides)
    model.compile(optimizer=RecordingSGD(learning_rate=learning_rate))
    return model


def replay(model, seed=0):
    """One eager step with fixed images and noise; returns the gradient applied, or None."""
    model.optimizer.applied = None
    model.replay_step(
        tiny_images(seed=seed), fixed_noise(model, 8, seed=seed), KL_COEFF, REG_COEFF
    )
    return model.optimizer.applied


def test_stability_options_are_validated_and_off_by_default():
    config = NVAEConfig()
    assert (config.grad_clip_norm, config.grad_skip_norm, config.ema_decay) == (0, 0, 0)
    for field, value in (
        ("grad_clip_norm", -1.0), ("grad_skip_norm", -1.0), ("ema_decay", 1.0),
        ("max_consecutive_nonfinite", -1),
    ):
        with pytest.raises(ValueError, match=f"NVAEConfig.{field}"):
            config.replace(**{field: value})
    assert NVAE.from_preset("tiny").weight_average is None


def test_gradient_clipping_scales_the_update_to_the_norm():
    raw = replay(sgd_tiny())
    norm = float(np.linalg.norm(raw.astype(np.float64)))
    clip = norm / 8
    clipped = replay(sgd_tiny(grad_clip_norm=clip))
    # Same weights, noise and power-iteration start: only the clipping differs, so the
    # gradient is scaled by clip / norm up to float32 rounding of the norm and product.
    np.testing.assert_allclose(clipped, raw * (clip / norm), rtol=1e-5, atol=1e-6 * clip)
    # A norm above the gradient's changes nothing.
    np.testing.assert_array_equal(replay(sgd_tiny(grad_clip_norm=norm * 2)), raw)


def test_updates_above_the_skip_norm_change_nothing_and_are_counted():
    norm = float(np.linalg.norm(replay(sgd_tiny())))
    model = sgd_tiny(grad_skip_norm=norm / 2)
    state = {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.variables
             if "seed_generator_state" not in v.path}
    state.update({v.path: v.numpy().copy() for v in model.optimizer.variables})
    assert replay(model) is None
    guard = model.step_guard
    assert int(guard.large_gradient_steps.numpy()) == 1
    assert int(guard.nonfinite_steps.numpy()) == 0
    now = {v.path: keras.ops.convert_to_numpy(v) for v in model.variables}
    now.update({v.path: v.numpy() for v in model.optimizer.variables})
    # Weights, optimizer, BN statistics, power-iteration vectors, step counter: all as
    # before the step.
    moved = [p for p in state if not np.array_equal(state[p], now[p])]
    assert len(moved) == 1 and moved[0].endswith("step_guard/large_gradient_steps")
    # Under the threshold the update is applied.
    assert replay(sgd_tiny(grad_skip_norm=norm * 2)) is not None

    # In fit's compiled step, counted and logged.
    model = sgd_tiny(grad_skip_norm=1e-9)
    history = model.fit(tiny_images(), batch_size=8, epochs=1, verbose=0)
    assert history.history["large_gradient_steps"] == [1.0]
    assert int(model.global_step.numpy()) == 0


def test_weight_average_follows_the_closed_form_and_is_used_for_sampling():
    decay = 0.5
    model = sgd_tiny(learning_rate=1e-3, ema_decay=decay)
    expected = None
    for seed in range(3):
        replay(model, seed)
        weights = [keras.ops.convert_to_numpy(v).copy() for v in model.trainable_variables]
        # The first applied step copies the weights, later ones average.
        expected = weights if expected is None else [
            decay * e + (1 - decay) * w for e, w in zip(expected, weights)
        ]
    assert int(model.step_guard.nonfinite_steps.numpy()) == 0
    averages = model.weight_average.averages
    for e, a in zip(expected, averages):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), e, rtol=1e-6, atol=1e-7)

    noise = fixed_noise(model, 2, seed=5)
    with model.averaged_weights():
        for v, a in zip(model.trainable_variables, averages):
            np.testing.assert_array_equal(v.numpy(), a.numpy())
    # The weights are back after the block, and they differ from the average.
    for v, w in zip(model.trainable_variables, weights):
        np.testing.assert_array_equal(v.numpy(), w)
    assert any(not np.allclose(w, e) for w, e in zip(weights, expected))

    # `sample` uses the average: a model without average holding its values samples alike.
    plain = lean_tiny()
    # Layer names differ between models; both list their variables in one order.
    own = [v for v in model.variables if "weight_average" not in v.path]
    assert len(own) == len(plain.variables)
    for v, source in zip(plain.variables, own):
        v.assign(source)
    for v, a in zip(plain.trainable_variables, averages):
        v.assign(a)
    np.testing.assert_array_equal(
        model.sample(2, noise=noise).numpy(), plain.sample(2, noise=noise).numpy()
    )
    for v, w in zip(model.trainable_variables, weights):
        np.testing.assert_array_equal(v.numpy(), w)

    # `evaluate` too: with the same noise seed both give the same NELBO.
    images = tiny_images(4, seed=9)
    noise_seed_state(model).assign([1, 2])
    noise_seed_state(plain).assign([1, 2])
    plain.compile(optimizer=keras.optimizers.SGD())
    ours = model.evaluate(images, batch_size=4, verbose=0, return_dict=True)
    theirs = plain.evaluate(images, batch_size=4, verbose=0, return_dict=True)
    assert ours["nelbo"] == pytest.approx(theirs["nelbo"], rel=1e-6)


def test_weight_average_is_saved_and_updated_by_fit(tmp_path):
    model = sgd_tiny(learning_rate=1e-3, ema_decay=0.9)
    model.fit(tiny_images(), batch_size=8, epochs=1, verbose=0)
    # One applied step in the compiled train step: the average is the weights.
    assert int(model.weight_average.applied_steps.numpy()) == 1
    for v, a in zip(model.trainable_variables, model.weight_average.averages):
        np.testing.assert_array_equal(v.numpy(), a.numpy())
    replay(model, seed=1)
    path = str(tmp_path / "ema.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.config.ema_decay == 0.9
    for a, b in zip(model.weight_average.averages, loaded.weight_average.averages):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(model.trainable_variables, loaded.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert int(loaded.weight_average.applied_steps.numpy()) == 2


def test_trainer_flags_set_the_config_fields():
    from keras_nvae.cli import train

    train.FLAGS.unparse_flags()
    train.FLAGS([
        "nvae-train", "--preset=tiny", "--max_consecutive_nonfinite=3",
        "--grad_clip_norm=200", "--grad_skip_norm=400", "--ema_decay=0.999",
    ])
    try:
        config = train.make_config()
    finally:
        train.FLAGS.unparse_flags()
    assert (
        config.max_consecutive_nonfinite, config.grad_clip_norm, config.grad_skip_norm,
        config.ema_decay,
    ) == (3, 200.0, 400.0, 0.999)
