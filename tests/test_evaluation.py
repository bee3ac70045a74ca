"""Tests for keras_nvae.evaluation: importance-weighted bits/dim and BN re-adjustment."""

import importlib.util
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from harness import REORDERED_RTOL
from harness import noise_seed_state
from harness import tiny_images
from keras_nvae import NVAE
from keras_nvae.official import layout as official_layout
from keras_nvae import distributions
from keras_nvae.inference import evaluation
from keras_nvae.layers.normalization import BatchNorm

BATCH = 8


@pytest.fixture(scope="module")
def _model_and_seed_state():
    keras.utils.set_random_seed(1)
    model = NVAE.from_preset("tiny")
    model.compile()
    return model, noise_seed_state(model).numpy()


@pytest.fixture
def model(_model_and_seed_state):
    """The module's tiny NVAE with its noise seed reset: no test depends on the tests before it."""
    model, seed_state = _model_and_seed_state
    noise_seed_state(model).assign(seed_state)
    return model


@pytest.fixture(scope="module")
def images():
    # Blocky 16x16 RGB images: random 4x4 colour patterns, upsampled.
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, size=(32, 4, 4, 3))
    return np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2).astype(np.uint8)


def _dataset(images, repeats=1):
    # Equal batches, so `model.evaluate`'s mean of batch means is the image mean.
    return tf.data.Dataset.from_tensor_slices(images).batch(BATCH).repeat(repeats)


def _elbo_bpd(model, dataset):
    return model.evaluate(dataset, return_dict=True, verbose=0)["bpd"]


def test_bits_per_dim_result_and_units(model, images, capsys):
    start = noise_seed_state(model).numpy()
    capsys.readouterr()
    result = evaluation.bits_per_dim(model, _dataset(images), num_samples=2, max_batches=3)
    # The progress bar counts images (3 of the 4 batches of 8).
    progress = capsys.readouterr().out
    assert "24/24" in progress and "/image" in progress and "nll_nats" in progress
    assert set(result) == {"nll_nats", "bpd", "num_images"}
    assert result["num_images"] == 3 * BATCH
    assert np.isfinite(result["nll_nats"]) and np.isfinite(result["bpd"])
    expected = result["nll_nats"] / (np.log(2.0) * 16 * 16 * 3)
    np.testing.assert_allclose(result["bpd"], expected, rtol=1e-6)
    # The same estimate by hand from the same noise seed: each batch's two copies of every image
    # go through one forward pass, and each image's log weights are log-mean-exp'ed.
    noise_seed_state(model).assign(start)
    log_px = []
    for batch in np.split(images[: 3 * BATCH], 3):
        log_w = model.log_likelihood(np.repeat(batch, 2, axis=0), num_samples=1).numpy()
        log_px.append(np.logaddexp.reduce(log_w.reshape(-1, 2), axis=1) - np.log(2.0))
    np.testing.assert_allclose(
        result["nll_nats"], -np.mean(np.concatenate(log_px)), rtol=REORDERED_RTOL
    )


def test_image_progress_counts_images_and_corrects_its_estimate(capsys):
    progress = evaluation.ImageProgress(num_batches=3, verbose=1)
    for index, done in enumerate((8, 16, 20)):
        progress.update(index, done, [("nll_nats", 100.0 + index)])
    progress.finish(20)
    out = capsys.readouterr().out
    # Estimated from the first batch (3 x 8), exact at the end; the last value as given.
    assert " 8/24" in out and "20/20" in out and "nll_nats: 102.0000" in out
    assert "24/24" not in out and out.count("20/20") == 1

    unknown = evaluation.ImageProgress(num_batches=None, verbose=1)
    unknown.update(0, 5)
    unknown.finish(5)
    assert "5/Unknown" in capsys.readouterr().out.replace(" ", "")


def test_one_sample_estimate_is_the_elbo_in_expectation(model, images):
    # With K=1 the estimate is -log w = recon + log q - log p, the same
    # single-sample estimator `evaluate` reports as NELBO (tiny has flows, so its
    # KL is log q - log p). Both runs average 8 x 32 = 256 independent draws;
    # the measured per-image Monte-Carlo std on this model is ~8 nats (0.016
    # bits/dim), so the difference of the means has std ~0.0014 bits/dim. The
    # tolerance (0.015) is ~10 standard deviations, yet far below the effect of
    # a dropped term: log q and log p are each ~-900 nats (~1.7 bits/dim) here.
    repeats = 8
    iw = evaluation.bits_per_dim(model, _dataset(images, repeats), num_samples=1)
    elbo = _elbo_bpd(model, _dataset(images, repeats))
    assert iw["num_images"] == repeats * len(images)
    assert abs(iw["bpd"] - elbo) < 0.015


def test_importance_weighted_bound_is_tighter_than_elbo(model, images):
    # log mean_k w_k >= mean_k log w_k (Jensen), so the IW NLL is at most the
    # NELBO in expectation. On this model the gap at K=20 measures ~0.026
    # bits/dim, ~13x the Monte-Carlo std (~0.002) of the difference of the
    # compared means (4 repeats of 32 images each), and the noise is seeded.
    repeats = 4
    elbo = _elbo_bpd(model, _dataset(images, repeats))
    iw = evaluation.bits_per_dim(model, _dataset(images, repeats), num_samples=20)
    assert np.isfinite(iw["bpd"]) and np.isfinite(elbo)
    assert iw["bpd"] < elbo


def test_bits_per_dim_accepts_tuples_and_rejects_bad_arguments(model, images):
    labelled = tf.data.Dataset.from_tensor_slices((images, np.zeros(len(images)))).batch(16)
    result = evaluation.bits_per_dim(model, labelled, num_samples=1, max_batches=1)
    assert result["num_images"] == 16
    with pytest.raises(ValueError, match="num_samples"):
        evaluation.bits_per_dim(model, _dataset(images), num_samples=0)
    with pytest.raises(ValueError, match="max_batches"):
        evaluation.bits_per_dim(model, _dataset(images), max_batches=0)
    with pytest.raises(ValueError, match="images_per_pass"):
        evaluation.bits_per_dim(model, _dataset(images), images_per_pass=2.5)
    with pytest.raises(ValueError, match="no images"):
        evaluation.bits_per_dim(model, _dataset(images[:0]), num_samples=1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        evaluation.bits_per_dim(model, _dataset(images.astype("float32")), num_samples=1)


def _bn_statistics(layers):
    return {
        layer.path: (layer.moving_mean.numpy(), layer.moving_variance.numpy())
        for layer in layers
    }


def _bn_layers(*blocks):
    return [
        layer
        for block in blocks
        for cell in block
        for layer in cell._flatten_layers()
        if isinstance(layer, BatchNorm)
    ]


def test_readjust_bn_changes_only_decoder_statistics():
    keras.utils.set_random_seed(2)
    model = NVAE.from_preset("tiny")
    towers = official_layout.official_modules(model)
    encoder = _bn_layers(towers["pre_process"], towers["enc_tower"])
    decoder = _bn_layers(towers["dec_tower"], towers["post_process"])
    assert encoder and decoder
    assert len(encoder) + len(decoder) == len(model._bn_layers)
    weights = [w.numpy() for w in model.trainable_weights]
    encoder_before = _bn_statistics(encoder)
    decoder_before = _bn_statistics(decoder)

    assert evaluation.readjust_bn(model, temperature=0.6, steps=3, batch_size=4, seed=0) is model

    for path, (mean, variance) in _bn_statistics(encoder).items():
        np.testing.assert_array_equal(mean, encoder_before[path][0])
        np.testing.assert_array_equal(variance, encoder_before[path][1])
    for path, (mean, variance) in _bn_statistics(decoder).items():
        assert not np.array_equal(mean, decoder_before[path][0]), path
        assert not np.array_equal(variance, decoder_before[path][1]), path
    for before, after in zip(weights, model.trainable_weights):
        np.testing.assert_array_equal(before, after.numpy())


def test_readjust_bn_is_seeded_and_validates_arguments():
    def readjusted(seed):
        keras.utils.set_random_seed(3)
        model = NVAE.from_preset("tiny")
        evaluation.readjust_bn(model, steps=2, batch_size=4, seed=seed)
        return [layer.moving_mean.numpy() for layer in model._bn_layers]

    for first, second in zip(readjusted(5), readjusted(5)):
        np.testing.assert_array_equal(first, second)
    model = NVAE.from_preset("tiny")
    with pytest.raises(ValueError, match="temperature"):
        evaluation.readjust_bn(model, temperature=0.0)
    with pytest.raises(ValueError, match="steps"):
        evaluation.readjust_bn(model, steps=0)
    with pytest.raises(ValueError, match="batch_size"):
        evaluation.readjust_bn(model, batch_size=-1)


def _benchmark(name):
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("images_per_pass", [3, 6, 100])  # 1 copy, 2 copies (last partial), all
def test_batched_estimator_equals_a_loop_of_single_passes(tiny, images_per_pass):
    # The benchmark's one-forward-pass-per-sample loop, fed the noise the estimator draws.
    bench = _benchmark("eval_throughput")
    x = tiny_images(3, seed=5)
    num_samples = 5
    batched = tiny.log_likelihood(x, num_samples, images_per_pass, seed=7).numpy()
    noise = bench.per_sample_noise(tiny, len(x), num_samples, images_per_pass, seed=7)
    assert len(noise) == num_samples
    loop = bench.make_loop_estimator(tiny)
    looped = loop(x, noise).numpy()
    np.testing.assert_allclose(batched, looped, rtol=REORDERED_RTOL)
    # Other noise gives another estimate (the check can fail).
    other = bench.per_sample_noise(tiny, len(x), num_samples, images_per_pass, seed=8)
    assert np.max(np.abs(loop(x, other).numpy() - batched)) > 1e-3


def test_memory_budget_sets_the_images_per_pass(tiny):
    per_image = tiny.activation_bytes_per_image()
    # At least the float32 stem output (8 channels) and decoder parameters of a 16x16 image.
    logits = distributions.decoder_num_channels("dmol", 3, 3)
    assert per_image >= 4 * 16 * 16 * (8 + logits)
    assert tiny.eval_images_per_pass(10 * per_image + 1) == 10
    assert tiny.eval_images_per_pass(1) == 1
    x = tiny_images(2)
    by_budget = tiny.log_likelihood(x, 5, seed=3, memory_budget_bytes=4 * per_image)
    by_count = tiny.log_likelihood(x, 5, images_per_pass=4, seed=3)
    np.testing.assert_array_equal(by_budget.numpy(), by_count.numpy())
    with pytest.raises(ValueError, match="memory_budget_bytes"):
        tiny.log_likelihood(x, 5, memory_budget_bytes=0)
