"""Latent tools and seeds: partial posteriors, interpolation, per-group temperature,
reproducible noise."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from harness import lean_tiny
from keras_nvae import NVAE
from keras_nvae.inference import latents
from keras_nvae import noise as noise_lib


def tiny_images(n=3, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (n, 16, 16, 3)).astype("uint8")


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(0)
    return NVAE.from_preset("tiny")


def _logits(model, latent_fn, batch):
    return model.top_down(batch, latent_fn).numpy()


# ------------------------------------------------------------ partial posterior
def test_partial_posterior_takes_top_groups_from_q_and_the_rest_from_p(tiny):
    # Rebuild the k = 2 reconstruction by hand from the groups' public API:
    # groups 0, 1 sample q with the call's posterior noise, groups 2, 3 sample p
    # at their own temperatures with the same per-group noise.
    x = tiny_images(2)
    temperatures = [0.3, 0.4, 0.5, 0.6]
    noise = [np.random.RandomState(i).randn(2, *s).astype("float32")
             for i, s in enumerate(tiny.latent_shapes)]
    got = tiny.reconstruct(x, noise=noise, num_posterior_groups=2, temperature=temperatures)
    features = tiny.bottom_up(tiny.preprocess_images(x)[0], training=False)

    def latent_fn(index, group, s):
        if index < 2:
            q, _ = group.posterior_and_prior(features[index], s)
            return group.flow(q.loc + q.scale * noise[index])[0]
        p = group.prior(s, temperatures[index])
        return p.loc + p.scale * noise[index]

    want = tiny.decoder_distribution(tiny.top_down(2, latent_fn)).mean().numpy()
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)


def test_all_groups_is_the_plain_reconstruction_and_zero_ignores_x(tiny):
    x = tiny_images(3)
    plain = tiny.reconstruct(x, seed=4).numpy()
    full = tiny.reconstruct(x, num_posterior_groups=tiny.num_groups, seed=4).numpy()
    np.testing.assert_array_equal(plain, full)
    assert not np.array_equal(plain, tiny.reconstruct(x, seed=5).numpy())
    # k = 0: a prior sample given the seed; other images give the same output,
    # and it is `sample` with the same seed and temperature.
    prior_only = tiny.reconstruct(x, num_posterior_groups=0, temperature=0.6, seed=4).numpy()
    other = tiny.reconstruct(
        tiny_images(3, seed=9), num_posterior_groups=0, temperature=0.6, seed=4
    )
    np.testing.assert_array_equal(prior_only, other.numpy())
    np.testing.assert_allclose(prior_only, tiny.sample(3, 0.6, seed=4).numpy(), atol=1e-6)
    # Pixel samples are seeded too.
    a = tiny.reconstruct(x, num_posterior_groups=1, seed=2, output="sample").numpy()
    b = tiny.reconstruct(x, num_posterior_groups=1, seed=2, output="sample").numpy()
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_posterior_groups": 5}, r"`num_posterior_groups` must be an int in \[0, 4\]"),
        ({"num_posterior_groups": -1}, r"`num_posterior_groups` must be an int in \[0, 4\]"),
        ({"num_posterior_groups": 1.5}, r"`num_posterior_groups` must be an int"),
        ({"temperature": 0.0}, "`temperature` values must be finite floats > 0"),
        ({"temperature": [1.0, 1.0, -1.0, 1.0]}, "`temperature` values must be finite floats > 0"),
        ({"temperature": [1.0, 1.0]}, "list of 4 floats"),
        ({"seed": -3}, r"`seed` must be None, an int in \[0, 2\*\*31\)"),
        ({"output": "median"}, "`output` must be 'mean' or 'sample'"),
    ],
)
def test_reconstruct_bad_arguments(tiny, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny.reconstruct(tiny_images(1), **kwargs)


# --------------------------------------------------------- per-group temperature
def test_per_group_temperature_scales_each_groups_prior(tiny):
    noise = [np.random.RandomState(i).randn(2, *s).astype("float32")
             for i, s in enumerate(tiny.latent_shapes)]
    temperatures = [0.2, 1.0, 0.5, 0.8]
    _, logits = tiny.sample(2, temperature=temperatures, noise=noise, return_logits=True)

    def latent_fn(index, group, s):
        p = group.prior(s)  # temperature 1: scale by hand
        return p.loc + p.scale * temperatures[index] * noise[index]

    np.testing.assert_allclose(logits.numpy(), _logits(tiny, latent_fn, 2), rtol=1e-5, atol=1e-5)
    # A list of equal values is the float.
    _, same = tiny.sample(2, temperature=[0.7] * 4, noise=noise, return_logits=True)
    _, scalar = tiny.sample(2, temperature=0.7, noise=noise, return_logits=True)
    np.testing.assert_array_equal(same.numpy(), scalar.numpy())
    with pytest.raises(ValueError, match="list of 4 floats"):
        tiny.sample(2, temperature=[0.7, 0.7, 0.7])


# ----------------------------------------------------------------- interpolation
def test_lerp_and_slerp_match_closed_forms():
    rng = np.random.RandomState(0)
    a = rng.randn(3, 2, 2, 4).astype("float32")
    b = rng.randn(3, 2, 2, 4).astype("float32")
    weights = tf.constant([0.0, 0.25, 1.0])
    linear = latents.lerp(tf.constant(a), tf.constant(b), weights).numpy()
    assert linear.shape == (3, 3, 2, 2, 4)
    np.testing.assert_allclose(linear[:, 1], 0.75 * a + 0.25 * b, rtol=1e-6)
    spherical = latents.slerp(tf.constant(a), tf.constant(b), weights).numpy()
    np.testing.assert_array_equal(spherical[:, 0], a)
    np.testing.assert_allclose(spherical[:, 2], b, rtol=1e-5, atol=1e-6)
    fa, fb = a.reshape(3, -1), b.reshape(3, -1)
    norms = np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1)
    omega = np.arccos(np.sum(fa * fb, 1) / norms)
    expected = (np.sin(0.75 * omega)[:, None] * fa + np.sin(0.25 * omega)[:, None] * fb) / np.sin(
        omega
    )[:, None]
    np.testing.assert_allclose(spherical[:, 1].reshape(3, -1), expected, rtol=1e-4, atol=1e-5)
    # Orthogonal unit vectors: the midpoint stays on the unit circle.
    e1 = tf.constant([[1.0, 0.0]])
    e2 = tf.constant([[0.0, 1.0]])
    mid = latents.slerp(e1, e2, tf.constant([0.5])).numpy()[0, 0]
    np.testing.assert_allclose(mid, [2**-0.5, 2**-0.5], rtol=1e-6)
    # Parallel vectors fall back to the linear path.
    np.testing.assert_allclose(
        latents.slerp(e1, 2.0 * e1, weights).numpy(), latents.lerp(e1, 2.0 * e1, weights).numpy()
    )


@pytest.mark.parametrize("mode", ["linear", "spherical"])
def test_interpolation_ends_are_the_reconstructions(tiny, mode):
    x1, x2 = tiny_images(2, seed=1), tiny_images(2, seed=2)
    path = tiny.interpolate(x1, x2, num_steps=3, mode=mode, seed=6).numpy()
    assert path.shape == (6, 16, 16, 3)
    # Pair major: pair i's path is rows 3i, 3i + 1, 3i + 2. The ends go through
    # u = (z - mu) / sigma and back, so they match to float32 rounding.
    np.testing.assert_allclose(path[0::3], tiny.reconstruct(x1, seed=6).numpy(), atol=1e-4)
    np.testing.assert_allclose(path[2::3], tiny.reconstruct(x2, seed=6).numpy(), atol=1e-4)
    assert np.abs(path[1::3] - path[0::3]).max() > 1e-3
    np.testing.assert_array_equal(path, tiny.interpolate(x1, x2, 3, mode=mode, seed=6).numpy())


def test_interpolating_some_groups_keeps_x1s_other_groups(tiny):
    x1, x2 = tiny_images(2, seed=1), tiny_images(2, seed=2)
    eps = tiny._latent_noise(2, seeds=noise_lib.CallSeeds(6))
    u1 = latents.standardized_latents(tiny, tiny.preprocess_images(x1)[0], eps)
    u2 = latents.standardized_latents(tiny, tiny.preprocess_images(x2)[0], eps)
    path = tiny.interpolate(x1, x2, num_steps=2, groups=[0, 2], seed=6).numpy()
    # The end of the path: x2's u in groups 0 and 2, x1's in groups 1 and 3.
    mixed = [u2[0], u1[1], u2[2], u1[3]]
    want = tiny.decoder_distribution(
        tiny.top_down(2, lambda index, group, s: group.sample_prior(s, mixed[index]))
    ).mean().numpy()
    np.testing.assert_allclose(path[1::2], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(path[0::2], tiny.reconstruct(x1, seed=6).numpy(), atol=1e-4)


def test_standardized_latents_decode_back_to_the_posterior_sample(tiny):
    x = tiny.preprocess_images(tiny_images(2))[0]
    eps = tiny._latent_noise(2, seeds=noise_lib.CallSeeds(1))
    u = latents.standardized_latents(tiny, x, eps)
    z = tiny.forward_terms(x, False, seeds=noise_lib.CallSeeds(1))["latents"]
    # The top group's prior is N(0, 1.01^2).
    np.testing.assert_allclose(u[0].numpy() * 1.01, z[0].numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"x2": tiny_images(3)}, "`x1` and `x2` must be image batches of the same shape"),
        ({"num_steps": 1}, "`num_steps` must be an int >= 2"),
        ({"mode": "cubic"}, "`mode` must be one of"),
        ({"groups": [4]}, r"`groups` must be None \(all\) or distinct .* in \[0, 4\)"),
        ({"groups": [1, 1]}, "distinct latent group indices"),
    ],
)
def test_interpolate_bad_arguments(tiny, kwargs, message):
    arguments = {"x1": tiny_images(2), "x2": tiny_images(2, seed=1), "num_steps": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        tiny.interpolate(**arguments)


# -------------------------------------------------------------------------- seeds
def test_explicit_seeds_make_every_draw_reproducible(tiny):
    x = tiny_images(2)
    for draw in (
        lambda seed: tiny.sample(2, seed=seed, output="sample"),
        lambda seed: tiny.encode(x, seed=seed)[-1],
        lambda seed: tiny.log_likelihood(x, num_samples=3, images_per_pass=2, seed=seed),
    ):
        np.testing.assert_array_equal(draw(11).numpy(), draw(11).numpy())
        assert not np.array_equal(draw(11).numpy(), draw(12).numpy())


def test_the_models_noise_follows_keras_global_seed():
    def model_with_seed(seed):
        keras.utils.set_random_seed(seed)
        return lean_tiny()

    a, b, c = model_with_seed(3), model_with_seed(3), model_with_seed(4)
    state = c.seed_generator.state.numpy()
    c.set_weights(a.get_weights())  # Same weights; only the noise stream differs.
    c.seed_generator.state.assign(state)
    assert not np.array_equal(state, a.seed_generator.state.numpy())
    x = tiny_images(2)
    # Training noise comes from the stream.
    loss = a.compute_objective(x, training=True)["loss"].numpy()
    assert loss == b.compute_objective(x, training=True)["loss"].numpy()
    assert loss != c.compute_objective(x, training=True)["loss"].numpy()
    first = a.encode(x)[0].numpy()
    np.testing.assert_array_equal(first, b.encode(x)[0].numpy())
    assert not np.array_equal(first, c.encode(x)[0].numpy())
    # The stream advances: the next call draws new noise.
    assert not np.array_equal(first, a.encode(x)[0].numpy())


def test_call_seeds_reject_bad_seeds():
    for seed in (-1, 2**31, 1.5, True, "3"):
        with pytest.raises(ValueError, match="`seed` must be None"):
            noise_lib.CallSeeds(seed)
