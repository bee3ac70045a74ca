"""The latent distributions of NVAE: the "residual normal" parameterisation.

The numerical conventions follow the official NVAE implementation
(Vahdat & Kautz, 2020): latent means and log standard deviations are soft
clamped to `[-5, 5]` and standard deviations have a floor of `1e-2`.
"""

import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

SOFT_CLAMP_BOUND = 5.0
SIGMA_FLOOR = 1e-2


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
