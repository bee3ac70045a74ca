"""FID: `frechet_distance` against closed forms and scipy, statistics caching, the pipeline with
a small random-weight feature network, and the InceptionV3 weights-file errors."""

import keras
import numpy as np
import pytest
import scipy.linalg

from harness import tiny_images
from keras_nvae.inference import evaluation
from keras_nvae.inference import fid as fid_lib


def _random_covariance(rng, dim, rank=None):
    factor = rng.standard_normal((dim, rank or dim))
    return factor @ factor.T / dim


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    var1, var2 = rng.uniform(0.1, 3.0, 5), rng.uniform(0.1, 3.0, 5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    actual = evaluation.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    assert actual == pytest.approx(expected, rel=1e-10)
    assert evaluation.frechet_distance(mu1, np.diag(var1), mu1, np.diag(var1)) == pytest.approx(
        0.0, abs=1e-10
    )


@pytest.mark.parametrize("rank", [None, 3])  # full rank and singular covariances
def test_frechet_distance_matches_scipy_sqrtm(rank):
    rng = np.random.default_rng(1)
    dim = 8
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    s1, s2 = _random_covariance(rng, dim, rank), _random_covariance(rng, dim)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    # scipy's sqrtm of the non-symmetric product loses a few digits on singular inputs.
    assert evaluation.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_rejects_bad_shapes():
    with pytest.raises(ValueError, match="sigma2"):
        evaluation.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(3))
    with pytest.raises(ValueError, match="mu2"):
        evaluation.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(2))
    with pytest.raises(ValueError, match="sigma1"):
        evaluation.frechet_distance(np.zeros(2), np.full((2, 2), np.inf), np.zeros(2), np.eye(2))


def _feature_network():
    """A small random-weight conv net: float [0, 1] NHWC (16x16x3) -> 8 features."""
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.Conv2D(8, 3, strides=2, activation="tanh"),
            keras.layers.GlobalAveragePooling2D(),
        ]
    )


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise(tmp_path):
    network = _feature_network()
    images = tiny_images(64, seed=2).astype(np.float32) / 255.0
    mu, sigma = fid_lib.dataset_statistics(images, network)
    assert fid_lib.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)
    rng = np.random.default_rng(0)
    distances = []
    for scale in (0.05, 0.2, 0.5):
        noisy = np.clip(images + scale * rng.standard_normal(images.shape), 0, 1)
        noisy_stats = fid_lib.dataset_statistics(noisy.astype(np.float32), network)
        distances.append(fid_lib.frechet_distance(*noisy_stats, mu, sigma))
    assert 0 < distances[0] < distances[1] < distances[2], distances


def test_fid_of_model_samples_caches_the_dataset_statistics(tiny, tmp_path):
    network = _feature_network()
    dataset = [tiny_images(16, seed=3), tiny_images(16, seed=4)]
    cache = str(tmp_path / "stats.npz")
    first = evaluation.fid(
        tiny, dataset, num_images=20, batch_size=8, feature_network=network, cache_path=cache,
        seed=5,
    )
    with np.load(cache) as cached:
        mu, sigma = fid_lib.feature_statistics(fid_lib.image_features(dataset, network))
        np.testing.assert_allclose(cached["mu"], mu)
        np.testing.assert_allclose(cached["sigma"], sigma)
    # The samples alone: the same seed gives the same FID; the cache is what is read back.
    samples = [tiny.sample(n, 1.0, seed=seed) for n, seed in ((8, 5), (8, 6), (4, 7))]
    expected = fid_lib.frechet_distance(
        *fid_lib.feature_statistics(fid_lib.image_features(samples, network)), mu, sigma
    )
    assert first == pytest.approx(expected, rel=1e-6) and first > 0
    again = evaluation.fid(
        tiny, [], num_images=20, batch_size=8, feature_network=network, cache_path=cache, seed=5
    )
    assert again == pytest.approx(first, rel=1e-6)


def test_fid_bad_input(tiny, tmp_path):
    network = _feature_network()
    with pytest.raises(ValueError, match="no images"):
        fid_lib.dataset_statistics([], network)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fid_lib.dataset_statistics([np.full((4, 16, 16, 3), 2.0, np.float32)], network)
    with pytest.raises(ValueError, match="int32"):
        fid_lib.dataset_statistics([np.zeros((4, 16, 16, 3), np.int32)], network)
    with pytest.raises(ValueError, match="num_images"):
        evaluation.fid(tiny, [], num_images=1, feature_network=network)
    bad_cache = tmp_path / "bad.npz"
    np.savez(bad_cache, other=np.zeros(2))
    with pytest.raises(ValueError, match="no 'mu' and 'sigma'"):
        fid_lib.dataset_statistics([], network, cache_path=str(bad_cache))


def test_inception_weights_file_errors(tmp_path):
    missing = str(tmp_path / "missing.h5")
    with pytest.raises(FileNotFoundError, match="missing.h5") as error:
        fid_lib.inception_feature_network(missing)
    assert fid_lib.INCEPTION_WEIGHTS_FILE in str(error.value)
    assert fid_lib.INCEPTION_WEIGHTS_URL in str(error.value)
    wrong = tmp_path / "wrong.h5"
    wrong.write_bytes(b"not an HDF5 file")
    with pytest.raises(ValueError, match="Could not load InceptionV3 weights"):
        fid_lib.inception_feature_network(str(wrong))
