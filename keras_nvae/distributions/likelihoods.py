"""Probability distributions used by NVAE.

This module holds the latent-variable distributions (the "residual normal"
parameterisation of NVAE) and the decoder likelihoods (Bernoulli, discretised
mixture of logistics, and a continuous normal), all as
`tensorflow_probability` distributions over NHWC images.

The numerical conventions follow the official NVAE implementation
(Vahdat & Kautz, 2020): latent means and log standard deviations are soft
clamped to `[-5, 5]`, standard deviations have a floor of `1e-2`, and images
are modelled in `[-1, 1]` after the map `x -> 2x - 1`.
"""

import math

import tensorflow as tf
import tensorflow_probability as tfp

from keras_nvae.config import LIKELIHOODS

tfd = tfp.distributions

SOFT_CLAMP_BOUND = 5.0
SIGMA_FLOOR = 1e-2
LOG_SCALE_MIN = -7.0
UNIFORM_EPS = 1e-5


def _cast(value, dtype):
    """Casts `value` to `dtype` without a detour through float32."""
    return tf.cast(tf.convert_to_tensor(value, dtype_hint=dtype), dtype)


def _check_temperature(temperature):
    """Raises a ValueError if `temperature` is known not to be a positive scalar."""
    value = tf.get_static_value(tf.convert_to_tensor(temperature))
    if value is not None and (value.ndim != 0 or not value > 0):
        raise ValueError(
            f"`temperature` must be a positive scalar, got {value!r}."
        )


def soft_clamp(x, bound=SOFT_CLAMP_BOUND):
    """Smoothly clamps `x` to `(-bound, bound)` with `bound * tanh(x / bound)`.

    Args:
        x: Tensor.
        bound: Positive float, the asymptotic magnitude of the output.

    Returns:
        Tensor of the same shape and dtype as `x`.
    """
    x = tf.convert_to_tensor(x)
    bound = _cast(bound, x.dtype)
    return bound * tf.tanh(x / bound)


# ---------------------------------------------------------------------------
# Latent distributions.
# ---------------------------------------------------------------------------


def normal_from_params(mu_raw, log_sigma_raw, temperature=1.0):
    """Builds the diagonal normal used for every NVAE latent variable.

    Matches the official `Normal(mu, log_sigma, temp)`: both inputs are soft
    clamped to `[-5, 5]`, the standard deviation is
    `exp(soft_clamp(log_sigma_raw)) + 1e-2` (so it never falls below `1e-2`),
    and it is multiplied by `temperature`.

    Args:
        mu_raw: Tensor of unconstrained means.
        log_sigma_raw: Tensor of unconstrained log standard deviations, same
            shape as `mu_raw`.
        temperature: Float or scalar tensor scaling the standard deviation.

    Returns:
        A `tfd.Normal` with the same batch shape as `mu_raw`.
    """
    mu_raw = tf.convert_to_tensor(mu_raw)
    log_sigma_raw = tf.convert_to_tensor(log_sigma_raw, dtype=mu_raw.dtype)
    temperature = _cast(temperature, mu_raw.dtype)
    sigma = (tf.exp(soft_clamp(log_sigma_raw)) + SIGMA_FLOOR) * temperature
    return tfd.Normal(loc=soft_clamp(mu_raw), scale=sigma)


def split_normal_params(params):
    """Splits the last axis of `params` into `(mu_raw, log_sigma_raw)` halves.

    Args:
        params: Tensor whose last axis has an even size `2 * D`.

    Returns:
        Tuple `(mu_raw, log_sigma_raw)` of tensors with last axis `D`.
    """
    mu_raw, log_sigma_raw = tf.split(params, 2, axis=-1)
    return mu_raw, log_sigma_raw


def residual_normal(
    prior_mu_raw, prior_log_sigma_raw, delta_mu_raw, delta_log_sigma_raw
):
    """Builds NVAE's residual posterior `q(z | x)` relative to the prior.

    As in the official code, the encoder's deltas are added to the prior's
    *raw* (pre-clamp) parameters and the result goes through
    `normal_from_params`, i.e. the posterior is
    `Normal(soft_clamp(mu_p + dmu), exp(soft_clamp(ls_p + dls)) + 1e-2)`.

    Args:
        prior_mu_raw: Tensor, raw mean of the prior.
        prior_log_sigma_raw: Tensor, raw log standard deviation of the prior.
        delta_mu_raw: Tensor, encoder's raw mean shift.
        delta_log_sigma_raw: Tensor, encoder's raw log standard deviation
            shift.

    Returns:
        A `tfd.Normal`.
    """
    return normal_from_params(
        prior_mu_raw + delta_mu_raw, prior_log_sigma_raw + delta_log_sigma_raw
    )


def standard_normal_prior(shape_like, temperature=1.0):
    """Builds the prior of the top latent group.

    Matches the official `Normal(zeros, zeros)`: the mean is 0 and, because
    of the `1e-2` floor, the standard deviation is `1.01 * temperature`.

    Args:
        shape_like: Tensor whose shape and dtype the prior takes.
        temperature: Float or scalar tensor scaling the standard deviation.

    Returns:
        A `tfd.Normal` with the shape of `shape_like`.
    """
    zeros = tf.zeros_like(shape_like)
    return normal_from_params(zeros, zeros, temperature)


# ---------------------------------------------------------------------------
# Decoder likelihoods.
# ---------------------------------------------------------------------------


def _check_num_channels(num_channels):
    if num_channels not in (1, 2, 3):
        raise ValueError(
            f"`num_channels` must be 1, 2 or 3. Received: {num_channels}"
        )


def _check_last_axis(params, expected, what):
    size = params.shape[-1]
    if size is not None and size != expected:
        raise ValueError(
            f"{what} expects the last axis of `params` to have size "
            f"{expected}. Received params with shape {params.shape}"
        )


def _coefficient_slot(target, source):
    """Index of the coefficient linking `source` channel to `target`.

    The slots follow the official layout: (1|0) -> 0, (2|0) -> 1, (2|1) -> 2.
    """
    return target * (target - 1) // 2 + source


def _autoregressive_shift(coeffs, channels, target):
    """Sum over earlier channels `i` of `coeffs[slot(target, i)] * x_i`.

    Args:
        coeffs: Tensor `(..., C, K)` of tanh'd coefficients.
        channels: List of tensors `(..., K)` (or broadcastable), the values of
            channels `0 .. target - 1` in `[-1, 1]`.
        target: Python int, the channel being predicted.

    Returns:
        Tensor broadcastable to `(..., K)`, or `0.0` for channel 0.
    """
    shift = 0.0
    for source in range(target):
        slot = _coefficient_slot(target, source)
        shift += coeffs[..., slot, :] * channels[source]
    return shift


class _ImageLikelihood(tfd.Distribution):
    """What the image likelihoods share: a parameter tensor `(..., H, W, P)`
    whose event is an image `(H, W, C)`. Subclasses set `_params` and
    `_num_channels` before calling `tfd.Distribution.__init__`, and say in
    their docstring how `sample`'s `temperature` acts."""

    @classmethod
    def _parameter_properties(cls, dtype, num_classes=None):
        return dict(params=tfp.util.ParameterProperties(event_ndims=3))

    @property
    def params(self):
        """The raw parameter tensor."""
        return self._params

    @property
    def num_channels(self):
        """Number of image channels."""
        return self._num_channels

    def _event_shape(self):
        return self._params.shape[-3:-1].concatenate([self._num_channels])

    def _event_shape_tensor(self):
        return tf.concat([tf.shape(self._params)[-3:-1], [self._num_channels]], axis=0)

    def sample_with_temperature(self, temperature, seed=None):
        """Draws one image per batch member at the given temperature.

        Equivalent to `sample(seed=seed, temperature=temperature)`.

        Args:
            temperature: Positive float or scalar tensor (the class docstring
                says how it acts).
            seed: Optional stateless seed, an int tensor of shape `(2,)`.

        Returns:
            Tensor `(..., H, W, C)` in `[0, 1]`.
        """
        return self.sample(seed=seed, temperature=temperature)


class DiscretizedMixtureLogistics(_ImageLikelihood):
    """Discretised mixture of logistics over NHWC images (PixelCNN++ / NVAE).

    Each pixel is a mixture of `M` components. Within a component the
    channels are discretised logistics in `[-1, 1]` whose means depend
    linearly on the earlier channels of the same pixel: for RGB,
    `mean_G = m_G + a * x_R` and `mean_B = m_B + b * x_R + c * x_G`.

    `params` has shape `(B, H, W, M + C * 3 * M)`. Its last axis is laid out
    exactly like the official NVAE channel axis: `params[..., :M]` are the
    mixture logits and the entry for colour `c`, field `f` and component `k`
    is at index `M + c * 3 * M + f * M + k`, with field 0 the means, field 1
    the log scales (clamped below at -7) and field 2 the autoregressive
    coefficients (passed through tanh). The coefficient of target channel
    `j` on source channel `i < j` is read from the coefficient field of
    colour `j * (j - 1) / 2 + i`, i.e. (G|R) -> 0, (B|R) -> 1, (B|G) -> 2.

    By default the edge bins integrate the logistic tails from the exact bin
    boundaries, so the probabilities of all `2 ** (C * num_bits)` images sum
    to one. The official code uses the thresholds `x < -0.999` and
    `x > 0.99` instead; at 8 bits the latter also gives value 254 the whole
    right tail, so the distribution is not normalised. `official_edges=True`
    reproduces it for parity checks.

    The batch shape is `params.shape[:-3]` and the event shape `(H, W, C)`.
    Values are floats in `[0, 1]` on the grid `k / (2 ** num_bits - 1)`.

    Sampling at temperature `t` (`sample(temperature=t)`,
    `sample_with_temperature(t)`) picks the component by Gumbel-max on
    `logits / t` (i.e. with probabilities proportional to `w_k ** (1 / t)`)
    and draws the logistic with scale `s * t`; with `official_temperature`
    the scale is `s / t`, as in the official `DiscMixLogistic.sample(t)`.

    Args:
        params: Float tensor `(..., H, W, M + C * 3 * M)`.
        num_channels: Number of image channels `C`, one of 1, 2 or 3.
        num_mixtures: Number of mixture components `M`.
        num_bits: Bits per channel of the data.
        official_edges: Whether to use the official (unnormalised at 8 bits)
            edge thresholds.
        official_temperature: Whether sampling divides the logistic scale by
            the temperature as the official code does, instead of multiplying
            it (the usual convention, where small temperatures reduce noise).
        validate_args: Whether to check that `log_prob` inputs lie in
            `[0, 1]`.
        name: Name of the distribution.
    """

    def __init__(
        self,
        params,
        num_channels=3,
        num_mixtures=10,
        num_bits=8,
        official_edges=False,
        official_temperature=False,
        validate_args=False,
        name="DiscretizedMixtureLogistics",
    ):
        parameters = dict(locals())
        _check_num_channels(num_channels)
        with tf.name_scope(name) as name:
            self._params = tf.convert_to_tensor(params, name="params")
            _check_last_axis(
                self._params,
                self.num_params(num_channels, num_mixtures),
                "DiscretizedMixtureLogistics",
            )
            self._num_channels = num_channels
            self._num_mixtures = num_mixtures
            self._num_bits = num_bits
            self._official_edges = official_edges
            self._official_temperature = official_temperature
            super().__init__(
                dtype=self._params.dtype,
                reparameterization_type=tfd.NOT_REPARAMETERIZED,
                validate_args=validate_args,
                allow_nan_stats=True,
                parameters=parameters,
                name=name,
            )

    @staticmethod
    def num_params(num_channels, num_mixtures):
        """Size of the last axis of `params`.

        Args:
            num_channels: Number of image channels `C`.
            num_mixtures: Number of mixture components `M`.

        Returns:
            Python int `M + C * 3 * M`.
        """
        return num_mixtures + num_channels * 3 * num_mixtures

    @property
    def num_mixtures(self):
        """Number of mixture components."""
        return self._num_mixtures

    @property
    def num_bits(self):
        """Bits per channel of the data."""
        return self._num_bits

    @property
    def official_edges(self):
        """Whether the official edge thresholds are used."""
        return self._official_edges

    @property
    def official_temperature(self):
        """Whether sampling uses the official temperature convention."""
        return self._official_temperature

    def _components(self):
        """Unpacks `params`.

        Returns:
            Tuple `(logits, means, log_scales, coeffs)`; `logits` has shape
            `(..., H, W, M)` and the others `(..., H, W, C, M)`.
        """
        m = self._num_mixtures
        logits = self._params[..., :m]
        fields = tf.reshape(
            self._params[..., m:],
            tf.concat(
                [tf.shape(self._params)[:-1], [self._num_channels, 3, m]],
                axis=0,
            ),
        )
        means = fields[..., 0, :]
        log_scales = tf.maximum(
            fields[..., 1, :], _cast(LOG_SCALE_MIN, self.dtype)
        )
        coeffs = tf.tanh(fields[..., 2, :])
        return logits, means, log_scales, coeffs

    def _edge_thresholds(self):
        if self._official_edges:
            return -0.999, 0.99
        half_bin = 1.0 / (2.0**self._num_bits - 1.0)
        return -1.0 + half_bin, 1.0 - half_bin

    def log_prob_per_pixel(self, x):
        """Log probability of each pixel.

        Args:
            x: Float tensor `(..., H, W, C)` with values in `[0, 1]` on the
                grid `k / (2 ** num_bits - 1)`.

        Returns:
            Tensor `(..., H, W)` of per-pixel log probabilities (nats).
        """
        x = tf.convert_to_tensor(x, dtype=self.dtype)
        if self.validate_args:
            message = "`x` must be in [0, 1]."
            with tf.control_dependencies(
                [
                    tf.debugging.assert_non_negative(x, message=message),
                    tf.debugging.assert_less_equal(
                        x, tf.ones([], x.dtype), message=message
                    ),
                ]
            ):
                x = tf.identity(x)
        logits, means, log_scales, coeffs = self._components()
        max_val = 2.0**self._num_bits - 1.0
        # (..., H, W, C, 1): broadcasts against the component axis.
        x = (2.0 * x - 1.0)[..., tf.newaxis]
        channels = [x[..., c, :] for c in range(self._num_channels)]
        centered = tf.stack(
            [
                channels[c]
                - means[..., c, :]
                - _autoregressive_shift(coeffs, channels, c)
                for c in range(self._num_channels)
            ],
            axis=-2,
        )

        inv_scale = tf.exp(-log_scales)
        plus_in = inv_scale * (centered + 1.0 / max_val)
        min_in = inv_scale * (centered - 1.0 / max_val)
        mid_in = inv_scale * centered
        cdf_delta = tf.sigmoid(plus_in) - tf.sigmoid(min_in)
        log_cdf_plus = plus_in - tf.math.softplus(plus_in)
        log_one_minus_cdf_min = -tf.math.softplus(min_in)
        log_pdf_mid = mid_in - log_scales - 2.0 * tf.math.softplus(mid_in)
        # In the far tails the bin mass underflows; approximate it with the
        # density at the bin centre times the bin width 2 / max_val.
        log_prob_mid = tf.where(
            cdf_delta > 1e-5,
            tf.math.log(tf.maximum(cdf_delta, 1e-10)),
            log_pdf_mid - math.log(max_val / 2.0),
        )
        left, right = self._edge_thresholds()
        log_probs = tf.where(
            x < left,
            log_cdf_plus,
            tf.where(x > right, log_one_minus_cdf_min, log_prob_mid),
        )
        log_probs = tf.reduce_sum(log_probs, axis=-2) + tf.nn.log_softmax(
            logits, axis=-1
        )
        return tf.reduce_logsumexp(log_probs, axis=-1)

    def _log_prob(self, x):
        return tf.reduce_sum(self.log_prob_per_pixel(x), axis=[-2, -1])

    def _sample_n(self, n, seed=None, temperature=1.0):
        gumbel_seed, logistic_seed = tfp.random.split_seed(
            tfp.random.sanitize_seed(seed), n=2
        )
        _check_temperature(temperature)
        logits, means, log_scales, coeffs = self._components()
        temperature = _cast(temperature, self.dtype)

        # Gumbel-max choice of one component per pixel.
        u = tf.random.stateless_uniform(
            tf.concat([[n], tf.shape(logits)], axis=0),
            seed=gumbel_seed,
            minval=UNIFORM_EPS,
            maxval=1.0 - UNIFORM_EPS,
            dtype=self.dtype,
        )
        gumbel = -tf.math.log(-tf.math.log(u))
        selection = tf.one_hot(
            tf.argmax(logits / temperature + gumbel, axis=-1),
            self._num_mixtures,
            dtype=self.dtype,
        )[..., tf.newaxis, :]
        means = tf.reduce_sum(means * selection, axis=-1)
        log_scales = tf.reduce_sum(log_scales * selection, axis=-1)
        coeffs = tf.reduce_sum(coeffs * selection, axis=-1)

        scale = tf.exp(log_scales)
        if self._official_temperature:
            scale = scale / temperature
        else:
            scale = scale * temperature
        u = tf.random.stateless_uniform(
            tf.shape(means),
            seed=logistic_seed,
            minval=UNIFORM_EPS,
            maxval=1.0 - UNIFORM_EPS,
            dtype=self.dtype,
        )
        x = means + scale * (tf.math.log(u) - tf.math.log1p(-u))
        return self._compose_channels(x, coeffs)

    def _compose_channels(self, x, coeffs):
        """Adds the autoregressive terms channel by channel and clamps.

        Args:
            x: Tensor `(..., C)` of per-channel values before the
                autoregressive terms, in `[-1, 1]` space.
            coeffs: Tensor `(..., C)` of selected coefficients.

        Returns:
            Tensor `(..., C)` in `[0, 1]`.
        """
        coeffs = coeffs[..., tf.newaxis]
        channels = []
        for c in range(self._num_channels):
            shift = _autoregressive_shift(coeffs, channels, c)
            value = x[..., c : c + 1] + shift
            channels.append(tf.clip_by_value(value, -1.0, 1.0))
        return tf.concat(channels, axis=-1) / 2.0 + 0.5

    def _mean(self):
        # The official point estimate: mixture-averaged means and
        # coefficients, composed autoregressively and clamped. It is not the
        # exact expectation of the discretised mixture.
        logits, means, _, coeffs = self._components()
        weights = tf.nn.softmax(logits, axis=-1)[..., tf.newaxis, :]
        means = tf.reduce_sum(means * weights, axis=-1)
        coeffs = tf.reduce_sum(coeffs * weights, axis=-1)
        return self._compose_channels(means, coeffs)


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


# ---------------------------------------------------------------------------
# Data helpers.
# ---------------------------------------------------------------------------


def reduce_bits(x01, num_bits):
    """Quantises 8-bit images in `[0, 1]` to `num_bits` bits per channel.

    Matches the official code: for `num_bits != 8`,
    `x = floor(x * 255 / 2 ** (8 - num_bits)) / (2 ** num_bits - 1)`, which
    keeps the values on the grid `k / (2 ** num_bits - 1)`.

    Args:
        x01: Float tensor with values `k / 255`.
        num_bits: Python int in `[1, 8]`.

    Returns:
        Tensor of the same shape; `x01` itself when `num_bits == 8`.
    """
    if num_bits == 8:
        return x01
    x01 = tf.convert_to_tensor(x01)
    x = tf.floor(x01 * 255.0 / 2.0 ** (8 - num_bits))
    return x / (2.0**num_bits - 1.0)


def nats_to_bits_per_dim(nats, num_dims):
    """Converts a negative log likelihood in nats to bits per dimension.

    Args:
        nats: Float or tensor, the negative log likelihood of one example.
        num_dims: Number of dimensions of one example (e.g. `H * W * C`).

    Returns:
        `nats / (ln(2) * num_dims)`.
    """
    return nats / (math.log(2.0) * num_dims)
