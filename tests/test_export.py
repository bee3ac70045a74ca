"""SavedModel export: endpoints, shapes and agreement with the Keras model."""

import numpy as np
import tensorflow as tf

from harness import REORDERED_RTOL
from harness import noise_seed_state
from harness import tiny_images
from keras_nvae import NVAE
from keras_nvae import loading


def _seeded(owner, state, fn):
    """`fn()` after setting the noise seed of `owner` (an NVAE or its SavedModel) to `state`."""
    noise_seed_state(owner).assign(state)
    return fn()


def _assert_same_images(served, keras_images):
    # Images in [0, 1]: the relative budget of a reordered float32 computation, as absolute.
    np.testing.assert_allclose(served, keras_images, rtol=0, atol=REORDERED_RTOL)


def test_saved_model_endpoints(tmp_path):
    # `tiny` with one latent scale (two groups, with a flow): every endpoint traces the network.
    model = NVAE.from_preset("tiny", num_latent_scales=1)
    path = str(tmp_path / "saved")
    model.export(path, verbose=False, log_likelihood_samples=2)
    served = loading.load_saved_model(path)
    assert {"sample", "reconstruct", "encode", "log_likelihood", "serving_default"} <= set(
        served.signatures
    )
    # Every endpoint computes what the Keras model computes from the same noise seed.
    start = noise_seed_state(model).numpy()
    samples = _seeded(
        served,
        start,
        lambda: served.signatures["serving_default"](
            num_samples=tf.constant(3), temperature=tf.constant(0.7)
        )["images"].numpy(),
    )
    assert samples.shape == (3, 16, 16, 3)
    assert samples.min() >= 0.0 and samples.max() <= 1.0
    _assert_same_images(samples, _seeded(model, start, lambda: model.sample(3, temperature=0.7)))

    x = tiny_images(2)
    latents = _seeded(served, start, lambda: served.encode(tf.constant(x)))
    assert sorted(latents) == ["z_00", "z_01"]
    assert [tuple(latents[k].shape[1:]) for k in sorted(latents)] == model.latent_shapes
    keras_latents = _seeded(model, start, lambda: model.encode(x))
    for key, keras_z in zip(sorted(latents), keras_latents):
        np.testing.assert_allclose(
            latents[key], keras_z, rtol=REORDERED_RTOL, atol=REORDERED_RTOL, err_msg=key
        )

    images = _seeded(served, start, lambda: served.reconstruct(tf.constant(x))["images"].numpy())
    _assert_same_images(images, _seeded(model, start, lambda: model.reconstruct(x)))
    # The exported reconstruction is the Keras one: from the same seed `encode` draws the same
    # posterior sample, so decoding the exported latents with the Keras model gives its images.
    keras_decoded = model.decode([latents[k] for k in sorted(latents)]).numpy()
    assert keras_decoded.shape == (2, 16, 16, 3)
    _assert_same_images(images, keras_decoded)

    likelihood = _seeded(served, start, lambda: served.log_likelihood(tf.constant(x)))
    bpd = likelihood["bits_per_dim"].numpy()
    assert bpd.shape == (2,) and np.all(np.isfinite(bpd)) and np.all(bpd > 0)
    nats = likelihood["nats"].numpy()
    keras_nats = _seeded(model, start, lambda: model.log_likelihood(x, num_samples=2))
    np.testing.assert_allclose(nats, keras_nats, rtol=REORDERED_RTOL)
    np.testing.assert_allclose(bpd, -nats / (16 * 16 * 3 * np.log(2.0)), rtol=1e-6)


def test_log_likelihood_is_at_least_the_elbo_on_average(tiny):
    x = tiny_images(2)
    num_samples = 8
    start = noise_seed_state(tiny).numpy()
    iw = tiny.log_likelihood(x, num_samples=num_samples, images_per_pass=len(x) * num_samples)
    iw = iw.numpy()
    # The same seed state gives the importance samples as one forward pass over every image
    # repeated K times (K copies fit in one pass here); with flows (as in tiny) the KL is
    # log q - log p, so -(recon_nll + KL) is the log importance weight.
    noise_seed_state(tiny).assign(start)
    out = tiny(np.repeat(x, num_samples, axis=0), training=False)
    log_weights = -(out["recon_nll"] + tf.reduce_sum(out["kl"], 1)).numpy().astype(np.float64)
    log_weights = log_weights.reshape(len(x), num_samples).T
    elbo = np.mean(log_weights, axis=0)
    # The IW estimate is the log-mean-exp of these log weights (~-5e3 nats each).
    expected = np.logaddexp.reduce(log_weights, axis=0) - np.log(num_samples)
    np.testing.assert_allclose(iw, expected, rtol=REORDERED_RTOL)
    # log p(x) >= IW bound >= ELBO: on the same draws, log-mean-exp >= mean (Jensen).
    assert np.all(iw >= elbo - 1.0)
