"""NVAE's decoder likelihoods: which one a configuration uses, and their units.

This module holds the Bernoulli and continuous Normal decoders and the
factory that builds the configured likelihood (the discretised mixture of
logistics is in `logistic_mixture`), all as `tensorflow_probability`
distributions over NHWC images.
"""

import math

import tensorflow as tf
import tensorflow_probability as tfp

from keras_nvae.config import LIKELIHOODS
from keras_nvae.distributions.image import _ImageLikelihood
from keras_nvae.distributions.image import _check_last_axis
from keras_nvae.distributions.logistic_mixture import DiscretizedMixtureLogistics
from keras_nvae.distributions.normal import _check_temperature
from keras_nvae.distributions.normal import normal_from_params
from keras_nvae.distributions.normal import split_normal_params

tfd = tfp.distributions


class NormalDecoder(_ImageLikelihood):
    """Continuous normal likelihood over NHWC images in `[0, 1]`.

    This is the official NVAE decoder for `--num_mixture_dec 1`. The image is
    mapped to `[-1, 1]` with `x -> 2x - 1` and every channel gets an
    independent `normal_from_params(mu_raw, log_sigma_raw)`. It is a
    *density*, not a discrete likelihood: its log probabilities are not
    comparable to those of `DiscretizedMixtureLogistics` and do not give a
    valid bits-per-dimension figure.

    `params` has shape `(..., H, W, 2 * C)`: the first `C` channels are the
    raw means and the last `C` the raw log standard deviations. The batch
    shape is `params.shape[:-3]` and the event shape `(H, W, C)`.

    Sampling at temperature `t` multiplies the standard deviation by `t`, as
    for the latent variables (the official decoder ignores the temperature).

    Args:
        params: Float tensor `(..., H, W, 2 * C)`.
        num_channels: Number of image channels `C`.
        validate_args: Whether to validate arguments.
        name: Name of the distribution.
    """

    def __init__(
        self, params, num_channels=3, validate_args=False, name="NormalDecoder"
    ):
        parameters = dict(locals())
        with tf.name_scope(name) as name:
            self._params = tf.convert_to_tensor(params, name="params")
            _check_last_axis(self._params, 2 * num_channels, "NormalDecoder")
            self._num_channels = num_channels
            super().__init__(
                dtype=self._params.dtype,
                reparameterization_type=tfd.FULLY_REPARAMETERIZED,
                validate_args=validate_args,
                allow_nan_stats=True,
                parameters=parameters,
                name=name,
            )

    def _normal(self, temperature=1.0):
        return normal_from_params(
            *split_normal_params(self._params), temperature=temperature
        )

    def _log_prob(self, x):
        x = 2.0 * tf.convert_to_tensor(x, dtype=self.dtype) - 1.0
        return tf.reduce_sum(self._normal().log_prob(x), axis=[-3, -2, -1])

    def _sample_n(self, n, seed=None, temperature=1.0):
        # The official decoder ignores the temperature; here it scales the
        # standard deviation like it does for the latent variables.
        _check_temperature(temperature)
        x = self._normal(temperature).sample(n, seed=seed)
        return tf.clip_by_value(x, -1.0, 1.0) / 2.0 + 0.5

    def _mean(self):
        # The clamped location mapped to [0, 1]; the point estimate used for
        # reconstructions, not the exact expectation of the clamped sample.
        loc = self._normal().loc
        return tf.clip_by_value(loc, -1.0, 1.0) / 2.0 + 0.5


def bernoulli_decoder(logits):
    """Bernoulli likelihood over binary NHWC images (official MNIST decoder).

    Args:
        logits: Float tensor `(..., H, W, C)` of per-pixel logits.

    Returns:
        A `tfd.Independent` with event shape `(H, W, C)` whose `log_prob`
        sums over the pixels of a `{0, 1}` float image and whose `mean()` is
        `sigmoid(logits)`.
    """
    logits = tf.convert_to_tensor(logits)
    return tfd.Independent(
        tfd.Bernoulli(logits=logits, dtype=logits.dtype),
        reinterpreted_batch_ndims=3,
    )


def _check_likelihood(likelihood):
    if likelihood not in LIKELIHOODS:
        raise ValueError(
            f"`likelihood` must be one of {LIKELIHOODS}. "
            f"Received: {likelihood!r}"
        )


def decoder_num_channels(likelihood, num_channels, num_mixtures):
    """Number of output channels the decoder network must produce.

    Args:
        likelihood: One of `"bernoulli"`, `"dmol"`, `"normal"`.
        num_channels: Number of image channels `C`.
        num_mixtures: Number of logistic mixture components `M` (used by
            `"dmol"` only).

    Returns:
        Python int: `C` for Bernoulli, `M + 3 * C * M` for the discretised
        mixture of logistics and `2 * C` for the normal decoder.
    """
    _check_likelihood(likelihood)
    if likelihood == "bernoulli":
        return num_channels
    if likelihood == "dmol":
        return DiscretizedMixtureLogistics.num_params(
            num_channels, num_mixtures
        )
    return 2 * num_channels


def make_decoder_distribution(
    likelihood,
    params,
    num_channels,
    num_mixtures,
    num_bits,
    official_edges=False,
):
    """Builds the decoder likelihood `p(x | z)` from the decoder's output.

    Args:
        likelihood: One of `"bernoulli"`, `"dmol"`, `"normal"`.
        params: Float tensor `(B, H, W, P)` with
            `P = decoder_num_channels(likelihood, num_channels, num_mixtures)`.
        num_channels: Number of image channels `C`.
        num_mixtures: Number of logistic mixture components (`"dmol"` only).
        num_bits: Bits per channel of the data (`"dmol"` only).
        official_edges: See `DiscretizedMixtureLogistics`.

    Returns:
        A distribution with batch shape `(B,)` and event shape `(H, W, C)`
        over images in `[0, 1]`.
    """
    _check_likelihood(likelihood)
    if likelihood == "bernoulli":
        params = tf.convert_to_tensor(params)
        _check_last_axis(params, num_channels, "The Bernoulli decoder")
        return bernoulli_decoder(params)
    if likelihood == "dmol":
        return DiscretizedMixtureLogistics(
            params,
            num_channels=num_channels,
            num_mixtures=num_mixtures,
            num_bits=num_bits,
            official_edges=official_edges,
        )
    return NormalDecoder(params, num_channels=num_channels)


def nats_to_bits_per_dim(nats, num_dims):
    """Converts a negative log likelihood in nats to bits per dimension.

    Args:
        nats: Float or tensor, the negative log likelihood of one example.
        num_dims: Number of dimensions of one example (e.g. `H * W * C`).

    Returns:
        `nats / (ln(2) * num_dims)`.
    """
    return nats / (math.log(2.0) * num_dims)
