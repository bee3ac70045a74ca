"""The discretised mixture of logistics, NVAE's likelihood of 8-bit colour images."""

import math

import tensorflow as tf
import tensorflow_probability as tfp

from keras_nvae.distributions.image import _ImageLikelihood
from keras_nvae.distributions.image import _check_last_axis
from keras_nvae.distributions.image import _check_num_channels
from keras_nvae.distributions.normal import _cast
from keras_nvae.distributions.normal import _check_temperature

tfd = tfp.distributions

LOG_SCALE_MIN = -7.0
UNIFORM_EPS = 1e-5


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
