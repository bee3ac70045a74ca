"""Fréchet Inception Distance (FID) between an NVAE's samples and a dataset.

FID compares the Gaussians fitted to feature vectors of two image sets:
`||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))`. The default
features are the 2,048-d average-pooled outputs of Keras'
`keras.applications.InceptionV3` with ImageNet weights read from a local
file. That network is not the TF1 Inception graph behind published FIDs
(`pt_inception-2015-12-05`), so these numbers compare runs with each other,
not with papers. Any callable mapping a float [0, 1] NHWC batch to
`(batch, features)` can replace it (`feature_network=`).
"""

import os

import numpy as np
import tensorflow as tf

from keras_nvae import inputs

INCEPTION_WEIGHTS_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
INCEPTION_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/"
    + INCEPTION_WEIGHTS_FILE
)
INCEPTION_SIZE = 299


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """The Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    `tr((S1 S2)^(1/2))` is the sum of the square roots of the eigenvalues of
    the symmetric positive semi-definite `S1^(1/2) S2 S1^(1/2)` (which has
    the eigenvalues of `S1 S2`), computed in float64 with numpy; eigenvalues
    that rounding makes negative count as 0.

    Args:
        mu1, mu2: mean vectors, shape (d,).
        sigma1, sigma2: covariance matrices, shape (d, d), symmetric PSD.

    Returns:
        float >= 0 (up to rounding).

    Raises:
        ValueError: mismatched or malformed shapes, or non-finite values.

    Example:
    ```python
    frechet_distance(np.zeros(2), np.eye(2), np.ones(2), 4 * np.eye(2))  # 2 + 2 = 4.0
    ```
    """
    mu1, mu2 = (np.asarray(m, np.float64) for m in (mu1, mu2))
    sigma1, sigma2 = (np.asarray(s, np.float64) for s in (sigma1, sigma2))
    dim = mu1.shape[0] if mu1.ndim == 1 else None
    for name, value, shape in (
        ("mu1", mu1, (dim,)),
        ("mu2", mu2, (dim,)),
        ("sigma1", sigma1, (dim, dim)),
        ("sigma2", sigma2, (dim, dim)),
    ):
        if dim is None or value.shape != shape or not np.all(np.isfinite(value)):
            raise ValueError(
                f"frechet_distance: `{name}` must be a finite array of shape {shape} "
                f"(mu1 sets d), got shape {value.shape}."
            )
    root1 = _psd_sqrt(sigma1)
    product = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((product + product.T) / 2.0)
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def _psd_sqrt(matrix):
    eigenvalues, vectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ vectors.T


def inception_feature_network(weights_path):
    """Keras' ImageNet InceptionV3 as a feature network: pool features of images.

    Images are resized to 299x299 (bilinear), grey images repeated to RGB and
    scaled to [-1, 1], InceptionV3's input range.

    Args:
        weights_path: the local no-top weights file `INCEPTION_WEIGHTS_FILE`
            (download it from `INCEPTION_WEIGHTS_URL` on a machine with
            internet access).

    Returns:
        A function: float [0, 1] NHWC batch -> (batch, 2048) float32 features.

    Raises:
        FileNotFoundError: `weights_path` is not a file.
        ValueError: the file is not InceptionV3's no-top weights.
    """
    import keras

    if not weights_path or not os.path.isfile(weights_path):
        raise FileNotFoundError(
            f"InceptionV3 weights file {weights_path!r} not found. FID needs Keras' "
            f"ImageNet InceptionV3 no-top weights ({INCEPTION_WEIGHTS_FILE}, from "
            f"{INCEPTION_WEIGHTS_URL}); copy it to this machine and pass its path."
        )
    try:
        network = keras.applications.InceptionV3(
            include_top=False,
            pooling="avg",
            weights=weights_path,
            input_shape=(INCEPTION_SIZE, INCEPTION_SIZE, 3),
        )
    except Exception as error:  # h5py, Keras and shape errors all differ.
        raise ValueError(
            f"Could not load InceptionV3 weights from {weights_path!r} "
            f"({type(error).__name__}: {error}). Expected {INCEPTION_WEIGHTS_FILE} "
            f"from {INCEPTION_WEIGHTS_URL}."
        ) from None

    @tf.function(reduce_retracing=True)
    def features(images):
        images = tf.image.resize(images, (INCEPTION_SIZE, INCEPTION_SIZE))
        if images.shape[-1] == 1:
            images = tf.repeat(images, 3, axis=-1)
        return network(2.0 * images - 1.0, training=False)

    return features


def image_features(batches, feature_network):
    """Features of every image of an iterable of batches.

    Args:
        batches: iterable of NHWC batches (uint8 [0, 255] or float [0, 1]).
        feature_network: callable, float [0, 1] NHWC batch -> (batch, d).

    Returns:
        float64 numpy array (num_images, d).

    Raises:
        ValueError: no images, or batches of the wrong rank, dtype or range.
    """
    rows = []
    for batch in batches:
        images = _as_unit_floats(inputs.unpack_images(batch))
        rows.append(np.asarray(feature_network(images), np.float64))
    if not rows or not sum(len(r) for r in rows):
        raise ValueError("FID: the dataset yielded no images.")
    return np.concatenate(rows)


def _as_unit_floats(images):
    images = tf.convert_to_tensor(images)
    if images.shape.rank != 4:
        raise ValueError(f"FID expects NHWC image batches, got shape {tuple(images.shape)}.")
    if images.dtype == tf.uint8:
        return tf.cast(images, tf.float32) / 255.0
    if not images.dtype.is_floating:
        raise ValueError(
            f"FID expects uint8 [0, 255] or float [0, 1] images, got {images.dtype.name}."
        )
    values = images.numpy()
    if values.size and (not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 1):
        raise ValueError(
            f"FID expects float images in [0, 1], got values in [{values.min():.4g}, "
            f"{values.max():.4g}]."
        )
    return tf.cast(images, tf.float32)


def feature_statistics(features):
    """Mean and covariance (rows are samples) of a (num_images, d) feature array.

    Raises:
        ValueError: fewer than 2 feature vectors.
    """
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(
            f"FID statistics need at least 2 feature vectors, got shape {features.shape}."
        )
    return features.mean(axis=0), np.cov(features, rowvar=False)


def dataset_statistics(dataset, feature_network, cache_path=None):
    """FID statistics (mu, sigma) of a dataset's features, cached in an `.npz`.

    Args:
        dataset: iterable of NHWC image batches, or an NHWC array (taken 100
            images at a time).
        feature_network: callable, float [0, 1] NHWC batch -> (batch, d).
        cache_path: optional `.npz` path: read when it exists (plain arrays,
            no pickles), else written after computing.

    Returns:
        (mu, sigma) float64 numpy arrays.

    Raises:
        ValueError: an empty dataset or a cache file without `mu`/`sigma`.
    """
    if cache_path and os.path.isfile(cache_path):
        with np.load(cache_path, allow_pickle=False) as cached:
            if not {"mu", "sigma"} <= set(cached.files):
                raise ValueError(
                    f"FID statistics file {cache_path!r} has no 'mu' and 'sigma' arrays; "
                    "delete it to recompute."
                )
            return cached["mu"], cached["sigma"]
    if isinstance(dataset, np.ndarray):
        dataset = [dataset[start : start + 100] for start in range(0, len(dataset), 100)]
    mu, sigma = feature_statistics(image_features(dataset, feature_network))
    if cache_path:
        np.savez(cache_path, mu=mu, sigma=sigma)
    return mu, sigma


def fid(
    model,
    dataset,
    num_images=10000,
    temperature=1.0,
    batch_size=100,
    feature_network=None,
    inception_weights=None,
    cache_path=None,
    seed=None,
):
    """FID between `num_images` prior samples of `model` and a dataset.

    Samples are decoder means (`output="mean"`, the official FID choice) at
    `temperature`. With the default Inception features the figure compares
    runs with each other only (see the module docstring).

    Args:
        model: an `NVAE`.
        dataset: iterable of NHWC image batches (the reference set).
        num_images: how many samples to draw.
        temperature: prior temperature (float > 0 or one per group).
        batch_size: samples per sampling call.
        feature_network: optional callable (float [0, 1] NHWC batch ->
            (batch, d)); default `inception_feature_network(inception_weights)`.
        inception_weights: path of the InceptionV3 weights file, used when
            `feature_network` is None.
        cache_path: optional `.npz` cache of the dataset's statistics.
        seed: optional int for reproducible samples.

    Returns:
        float, the FID.

    Example:
    ```python
    evaluation.fid(model, test_ds, num_images=2000, inception_weights="inception_notop.h5",
                   cache_path="test_fid_stats.npz")
    ```
    """
    for name, value in (("num_images", num_images), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ValueError(f"`{name}` must be an int >= 2, got {value!r}.")
    if feature_network is None:
        feature_network = inception_feature_network(inception_weights)
    mu_data, sigma_data = dataset_statistics(dataset, feature_network, cache_path)
    counts = [batch_size] * (num_images // batch_size)
    if num_images % batch_size:
        counts.append(num_images % batch_size)
    samples = (
        tf.clip_by_value(
            model.sample(count, temperature, seed=None if seed is None else seed + index), 0, 1
        )
        for index, count in enumerate(counts)
    )
    mu_model, sigma_model = feature_statistics(image_features(samples, feature_network))
    if mu_model.shape != mu_data.shape:
        raise ValueError(
            f"The dataset statistics have {mu_data.shape[0]} features but the feature network "
            f"gives {mu_model.shape[0]}: was {cache_path!r} computed with another network?"
        )
    return frechet_distance(mu_model, sigma_model, mu_data, sigma_data)
