"""Evaluation of trained NVAEs: importance-weighted bits/dim, anomaly scores, FID and BN
re-adjustment."""

import weakref

import keras
import numpy as np
import tensorflow as tf

from keras_nvae import distributions
from keras_nvae import inputs
from keras_nvae.data import image_files
from keras_nvae.inference.fid import dataset_statistics  # noqa: F401  (public API)
from keras_nvae.inference.fid import fid  # noqa: F401  (public API)
from keras_nvae.inference.fid import frechet_distance  # noqa: F401  (public API)


def bits_per_dim(
    model,
    dataset,
    num_samples=1000,
    max_batches=None,
    images_per_pass=None,
    verbose=1,
    seed=None,
):
    """Importance-weighted negative log-likelihood of a dataset.

    Every image gets `num_samples` importance samples from the posterior, with
    batch normalisation in inference mode (running statistics), as the official
    evaluation does:
    `log p(x) ~ logsumexp_k(log p(x|z_k) + log p(z_k) - log q(z_k|x)) - log K`.
    The bound tightens as `num_samples` grows; with `num_samples=1` it is the
    (one-sample) ELBO. Samples of one batch are evaluated together by repeating
    the images along the batch axis, `images_per_pass` images at a time.

    Args:
        model: an `NVAE`.
        dataset: iterable of image batches (NHWC, uint8 [0, 255] or float
            [0, 1]), e.g. from `keras_nvae.data.make_dataset`; `(images, ...)`
            tuples and `{"image": ...}` dicts are accepted too.
        num_samples: K, the number of importance samples per image.
        max_batches: optional int, evaluate only this many batches.
        images_per_pass: optional int, the most images (batch size times
            samples) one forward pass sees, though always at least one copy
            of the batch. Default: twice the model's training batch size.
        verbose: 1 shows a progress bar (images done, time left, NLL), 0 nothing.
        seed: optional int: the importance samples are a function of it (and
            of the batch order). Default: the model's seed stream.

    Returns:
        dict with `"nll_nats"` (mean negative log-likelihood per image in nats,
        the unit MNIST results are reported in), `"bpd"` (the same in bits per
        dimension, `nll_nats / (ln 2 * model.config.num_dims)`) and
        `"num_images"` (how many images were evaluated).

    Raises:
        ValueError: invalid `num_samples`, `max_batches` or `images_per_pass`,
            or an empty dataset.

    Example:
    ```python
    from keras_nvae import data, evaluation

    test = data.make_dataset("digits", "test", batch_size=64)
    evaluation.bits_per_dim(model, test, num_samples=100)
    # {"nll_nats": 160.2, "bpd": 3.61, "num_images": 359}
    ```
    """
    _check_counts(num_samples, max_batches, images_per_pass)
    seeds = None if seed is None else keras.random.SeedGenerator(seed)
    progress = ImageProgress(_num_batches(dataset, max_batches), verbose=verbose)
    with model.averaged_weights():
        total_nll, num_images = _summed_nll(
            model, dataset, num_samples, max_batches, images_per_pass, seeds, progress
        )
    nll = total_nll / num_images
    return {
        "nll_nats": nll,
        "bpd": float(distributions.nats_to_bits_per_dim(nll, model.config.num_dims)),
        "num_images": num_images,
    }


def _summed_nll(model, dataset, num_samples, max_batches, images_per_pass, seeds, progress):
    """The summed negative log-likelihood (nats) of the dataset's images, and their number.

    Raises:
        ValueError: the dataset yielded no images.
    """
    total_nll, num_images = 0.0, 0
    for index, batch in enumerate(_named_batches(dataset)):
        if max_batches is not None and index >= max_batches:
            break
        images = inputs.unpack_images(batch)
        log_px = model.log_likelihood(images, num_samples, images_per_pass, seed=seeds)
        total_nll -= float(tf.reduce_sum(tf.cast(log_px, tf.float64)))
        num_images += int(images.shape[0])
        progress.update(index, num_images, [("nll_nats", total_nll / num_images)])
    if num_images == 0:
        raise ValueError("bits_per_dim: the dataset yielded no images.")
    progress.finish(num_images)
    return total_nll, num_images


def _named_batches(dataset):
    """Yields the batches of `dataset`; an image file it cannot decode raises `BadImageFileError`."""
    with image_files.decode_errors_named():
        yield from dataset


def _check_counts(num_samples, max_batches, images_per_pass):
    """Raise a ValueError naming the argument when a count is not a positive int."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"`num_samples` must be a positive int, got {num_samples!r}.")
    for name, value in (("max_batches", max_batches), ("images_per_pass", images_per_pass)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ValueError(f"`{name}` must be a positive int or None, got {value!r}.")


class ImageProgress:
    """A Keras `Progbar` counting images: done, per second and left, over batches.

    The total is estimated from the number of batches times the first
    batch's size (the last batch may be smaller) and is exact at the end.

    Args:
        num_batches: batches to come, or None when unknown (no time left shown).
        verbose: 1 shows the bar, 0 nothing.

    Example:
    ```python
    progress = ImageProgress(num_batches=6, verbose=1)
    for index, batch in enumerate(batches):
        done += len(batch)
        progress.update(index, done, [("nll_nats", mean_nll)])
    progress.finish(done)
    ```
    """

    def __init__(self, num_batches, verbose=1):
        self.num_batches = num_batches
        # No metric is stateless: values are shown as given, not averaged.
        self._bar = keras.utils.Progbar(
            None, verbose=verbose, unit_name="image", stateless_metrics=()
        )
        self._finished = False

    def update(self, batch_index, images_done, values=()):
        """Show `images_done` after batch `batch_index` (from 0) and `values` (name, value)."""
        if self._bar.target is None and self.num_batches is not None:
            self._bar.target = self.num_batches * images_done
        last = self.num_batches is not None and batch_index + 1 >= self.num_batches
        if last:
            self._bar.target = images_done
        self._bar.update(images_done, list(values), finalize=last)
        self._finished = last

    def finish(self, images_done):
        """End the bar at `images_done` images if the last update did not."""
        if not self._finished:
            self._bar.target = images_done
            self._bar.update(images_done, finalize=True)
            self._finished = True


def _num_batches(dataset, max_batches):
    """The number of batches `bits_per_dim` will see, or None when unknown."""
    size = None
    if isinstance(dataset, tf.data.Dataset):
        cardinality = int(dataset.cardinality())
        size = cardinality if cardinality >= 0 else None
    elif hasattr(dataset, "__len__"):
        size = len(dataset)
    if max_batches is not None:
        return max_batches if size is None else min(size, max_batches)
    return size


def scores(model, data, num_samples=100, batch_size=None, verbose=0, seed=None):
    """Per-image anomaly scores of a dataset: `model.score` batch by batch.

    Args:
        model: an `NVAE`.
        data: an NHWC image array (batched here) or an iterable of image
            batches (see `bits_per_dim`).
        num_samples: K, importance samples per image.
        batch_size: images per batch when `data` is an array. Default: the
            model's training batch size.
        verbose: 1 shows a Keras progress bar of the images done and the
            time left, 0 nothing.
        seed: optional int: the scores are a function of it (and of the
            batch order). Default: the model's seed stream.

    Returns:
        float64 numpy array (num_images,) of bits/dim, in data order.

    Raises:
        ValueError: invalid `num_samples` or `batch_size`, or no images.

    Example:
    ```python
    in_scores = evaluation.scores(model, test_images, num_samples=10, seed=0)
    ```
    """
    _check_positive_int("num_samples", num_samples)
    batches = _image_batches(data, model.config.batch_size if batch_size is None else batch_size)
    seeds = None if seed is None else keras.random.SeedGenerator(seed)
    progress = ImageProgress(_num_batches(batches, None), verbose=verbose)
    results, done = [], 0
    for index, batch in enumerate(_named_batches(batches)):
        images = inputs.unpack_images(batch)
        results.append(np.asarray(model.score(images, num_samples, seed=seeds), np.float64))
        done += len(results[-1])
        progress.update(index, done)
    if not done:
        raise ValueError("scores: `data` yielded no images.")
    progress.finish(done)
    return np.concatenate(results)


def auroc(in_scores, out_scores):
    """Area under the ROC curve of telling `out_scores` from `in_scores`.

    The probability that a random out-of-distribution score exceeds a random
    in-distribution one, ties counting one half: the Mann-Whitney U
    statistic of the two samples over `len(in) * len(out)`, from mid-ranks.

    Args:
        in_scores: 1-D array of scores of in-distribution images.
        out_scores: 1-D array of scores of anomalies (higher = more anomalous).

    Returns:
        float in [0, 1]: 1 when every anomaly scores above every in-distribution
        image, 0.5 for indistinguishable scores.

    Raises:
        ValueError: an empty, non-1-D or non-finite array.

    Example:
    ```python
    auroc([1.0, 2.0], [3.0, 2.0])  # 0.875
    ```
    """
    in_scores = _check_scores("in_scores", in_scores)
    out_scores = _check_scores("out_scores", out_scores)
    combined = np.concatenate([in_scores, out_scores])
    _, inverse, counts = np.unique(combined, return_inverse=True, return_counts=True)
    mid_ranks = np.cumsum(counts) - (counts - 1) / 2.0
    out_rank_sum = mid_ranks[inverse[len(in_scores):]].sum()
    n_out = len(out_scores)
    u_statistic = out_rank_sum - n_out * (n_out + 1) / 2.0
    return float(u_statistic / (len(in_scores) * n_out))


def ood_auroc(model, in_data, out_data, num_samples=100, batch_size=None, seed=None):
    """How well the model's likelihood tells `out_data` from `in_data`.

    Args:
        model: an `NVAE`.
        in_data: in-distribution images (array or iterable of batches).
        out_data: anomalies, e.g. another dataset, noise or inverted images.
        num_samples: K, importance samples per image.
        batch_size: images per batch of array data (see `scores`).
        seed: optional int for reproducible scores.

    Returns:
        float: `auroc(scores(in_data), scores(out_data))` with per-image
        bits/dim as the score.

    Example:
    ```python
    evaluation.ood_auroc(model, digits, 255 - digits, num_samples=10, seed=0)
    ```
    """
    in_scores = scores(model, in_data, num_samples, batch_size, seed=seed)
    out_scores = scores(model, out_data, num_samples, batch_size, seed=seed)
    return auroc(in_scores, out_scores)


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")


def _check_scores(name, values):
    values = np.asarray(values, np.float64)
    if values.ndim != 1 or not len(values) or not np.all(np.isfinite(values)):
        raise ValueError(
            f"`{name}` must be a non-empty 1-D array of finite scores, got shape "
            f"{values.shape}."
        )
    return values


def _image_batches(data, batch_size):
    """`data` as an iterable of batches: arrays are split into `batch_size` rows."""
    _check_positive_int("batch_size", batch_size)
    if isinstance(data, (np.ndarray, tf.Tensor)):
        if len(data.shape) != 4:
            raise ValueError(
                f"Image arrays must be NHWC (4-D), got shape {tuple(data.shape)}; pass "
                "a batch of images or a dataset of batches."
            )
        return [data[start : start + batch_size] for start in range(0, len(data), batch_size)]
    return data


def readjust_bn(model, temperature=0.7, steps=500, batch_size=16, seed=None):
    """Re-estimates the decoder's batch-norm statistics from prior samples.

    The official NVAE "BN re-adjustment" (`--readjust_bn`): `steps` sampling
    passes at `temperature` run with batch normalisation in training mode, so
    the running mean and variance of every decoder BN layer become (an
    exponential moving average of) the statistics of samples at that
    temperature. Nothing else changes: no weights are updated and the encoder,
    which sampling does not use, keeps its statistics. Low-temperature samples
    usually look much better afterwards; likelihood evaluation should use the
    training statistics, so re-adjust a copy (or reload) before `bits_per_dim`.

    Args:
        model: an `NVAE`.
        temperature: prior temperature of the samples: a float > 0, or a
            list of one per latent group.
        steps: number of sampling passes (the official code uses 500).
        batch_size: samples per pass (official: 16 when sampling).
        seed: optional int for reproducible statistics. Default: a seed
            drawn from Keras' global seed (`keras.utils.set_random_seed`).

    Returns:
        `model`, with re-adjusted decoder BN statistics.

    Raises:
        ValueError: invalid `temperature`, `steps` or `batch_size`.

    Example:
    ```python
    from keras_nvae import evaluation

    evaluation.readjust_bn(model, temperature=0.7)
    images = model.sample(16, temperature=0.7)
    ```
    """
    temperature = inputs.check_temperature(temperature, model.num_groups)
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    sampling_pass, seed_generator = _readjust_pass(model, batch_size)
    seed_generator.state.assign(keras.random.SeedGenerator(seed).state)
    # A scalar temperature is a tensor argument: one trace serves every temperature.
    if len(set(temperature)) == 1:
        temperature = tf.constant(temperature[0], tf.float32)
    else:
        temperature = tuple(temperature)
    for _ in range(steps):
        sampling_pass(temperature)
    return model


# The compiled sampling passes of `readjust_bn`, per model and batch size.
_READJUST_PASSES = weakref.WeakKeyDictionary()


def _readjust_pass(model, batch_size):
    """`readjust_bn`'s compiled train-mode prior pass and the seed generator it draws from.

    Made once per model and batch size (a new `tf.function` per call would trace the
    decoder again each time); the generator is kept off the model's variables.
    """
    passes = _READJUST_PASSES.setdefault(model, {})
    if batch_size not in passes:
        model_ref = weakref.ref(model)
        seed_generator = keras.random.SeedGenerator(0)

        def sampling_pass(temperature):
            model_ref().prior_logits(
                batch_size, temperature, seed=seed_generator, training=True
            )

        passes[batch_size] = (tf.function(sampling_pass), seed_generator)
    return passes[batch_size]
