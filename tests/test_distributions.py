"""Numerical tests for `keras_nvae.distributions`."""

import itertools
import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from keras_nvae import distributions as dist_lib
from keras_nvae import inputs

tfd = tfp.distributions
DMoL = dist_lib.DiscretizedMixtureLogistics

# Coefficient slot of (target channel, source channel), official layout.
SLOTS = {(1, 0): 0, (2, 0): 1, (2, 1): 2}


# ---------------------------------------------------------------------------
# Independent NumPy references.
# ---------------------------------------------------------------------------


def np_logsumexp(a, axis):
    m = np.max(a, axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(a - m), axis=axis))


def np_softplus(z):
    return np.logaddexp(0.0, z)


def np_sigmoid(z):
    with np.errstate(over="ignore"):  # exp overflow correctly gives 0.
        return 1.0 / (1.0 + np.exp(-z))


def np_field(params, num_mixtures, colour, field):
    """Reads field `field` of colour `colour` with the official indexing."""
    m = num_mixtures
    idx = [m + colour * 3 * m + field * m + k for k in range(m)]
    return params[..., idx]


def np_dmol_log_prob(params, x01, num_channels, num_mixtures, num_bits,
                     official_edges=False):
    """Per-example DMoL log probability, `(B,)`, for `params (B,H,W,P)`."""
    m = num_mixtures
    max_val = 2.0**num_bits - 1.0
    x = 2.0 * x01 - 1.0
    logits = params[..., :m]
    total = logits - np_logsumexp(logits, -1)[..., None]
    if official_edges:
        left, right = -0.999, 0.99
    else:
        left, right = -1.0 + 1.0 / max_val, 1.0 - 1.0 / max_val
    for c in range(num_channels):
        mean = np_field(params, m, c, 0).copy()
        for i in range(c):
            coeff = np.tanh(np_field(params, m, SLOTS[(c, i)], 2))
            mean += coeff * x[..., i:i + 1]
        log_scale = np.maximum(np_field(params, m, c, 1), -7.0)
        xc = x[..., c:c + 1]
        centered = xc - mean
        inv = np.exp(-log_scale)
        plus = inv * (centered + 1.0 / max_val)
        minus = inv * (centered - 1.0 / max_val)
        mid = inv * centered
        delta = np_sigmoid(plus) - np_sigmoid(minus)
        with np.errstate(divide="ignore"):
            log_delta = np.log(np.maximum(delta, 1e-10))
        log_mid = np.where(
            delta > 1e-5,
            log_delta,
            mid - log_scale - 2.0 * np_softplus(mid) - np.log(max_val / 2.0),
        )
        lp = np.where(
            xc < left,
            plus - np_softplus(plus),
            np.where(xc > right, -np_softplus(minus), log_mid),
        )
        total = total + lp
    return np_logsumexp(total, -1).sum(axis=(1, 2))


def np_compose(x, coeffs):
    """Sequential AR composition + clamp; `x`, `coeffs` `(..., C)`."""
    out = []
    for c in range(x.shape[-1]):
        value = x[..., c].copy()
        for i in range(c):
            value += coeffs[..., SLOTS[(c, i)]] * out[i]
        out.append(np.clip(value, -1.0, 1.0))
    return np.stack(out, -1) / 2.0 + 0.5


def random_dmol_params(rng, shape, num_channels, num_mixtures):
    """Params with means spread over (and beyond) [-1, 1], varied scales."""
    m = num_mixtures
    params = np.zeros(shape + (DMoL.num_params(num_channels, m),))
    params[..., :m] = rng.normal(size=shape + (m,))
    for c in range(num_channels):
        params[..., m + c * 3 * m:m + c * 3 * m + m] = rng.uniform(
            -1.2, 1.2, size=shape + (m,))
        params[..., m + c * 3 * m + m:m + c * 3 * m + 2 * m] = rng.uniform(
            -5.0, 0.5, size=shape + (m,))
        params[..., m + c * 3 * m + 2 * m:m + (c + 1) * 3 * m] = rng.normal(
            size=shape + (m,))
    return params


# The official likelihood approximates bins of mass below 1e-5 by the density
# at the bin centre, so normalisation only holds to about this tolerance.
NORMALISATION_ATOL = 1e-4


def grid(num_bits):
    return np.arange(2**num_bits) / (2.0**num_bits - 1.0)


def pixel_probs(params, xs, num_channels, num_mixtures, num_bits,
                official_edges=False):
    """Probabilities of single-pixel values `xs (N, C)` under `params (P,)`."""
    d = DMoL(params[None, None, None, :], num_channels, num_mixtures,
             num_bits, official_edges=official_edges)
    return np.exp(d.log_prob(xs[:, None, None, :]).numpy())


def conditional_sum(params, prefix, num_mixtures, num_bits,
                    official_edges=False):
    """Sum over the next channel's values of p(next | prefix).

    The marginal of the first `c` channels of the mixture is the DMoL with
    the first `c` colour blocks of `params`; the conditional of channel `c`
    is the ratio of the `c + 1` and `c` channel marginals.
    """
    m = num_mixtures
    c = len(prefix)
    values = grid(num_bits)
    xs = np.concatenate(
        [np.tile(prefix, (len(values), 1)), values[:, None]], axis=1)
    joint = pixel_probs(params[:DMoL.num_params(c + 1, m)], xs, c + 1, m,
                        num_bits, official_edges).sum()
    if c == 0:
        return joint
    marginal = pixel_probs(params[:DMoL.num_params(c, m)],
                           np.asarray(prefix)[None], c, m, num_bits,
                           official_edges)[0]
    return joint / marginal


# ---------------------------------------------------------------------------
# Discretised mixture of logistics.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("num_bits", [8, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_dmol_conditionals_are_normalised(num_bits, seed):
    rng = np.random.default_rng(seed)
    m = 3
    params = random_dmol_params(rng, (), 3, m)
    levels = rng.integers(0, 2**num_bits, size=3) / (2.0**num_bits - 1.0)
    for c in range(3):
        total = conditional_sum(params, levels[:c], m, num_bits)
        np.testing.assert_allclose(total, 1.0, atol=NORMALISATION_ATOL,
                                   err_msg=f"c={c}")


def test_dmol_full_joint_is_normalised_at_5_bits():
    rng = np.random.default_rng(2)
    params = random_dmol_params(rng, (), 3, 3)
    xs = np.array(list(itertools.product(grid(5), repeat=3)))
    assert xs.shape == (32768, 3)
    np.testing.assert_allclose(
        pixel_probs(params, xs, 3, 3, 5).sum(), 1.0, atol=NORMALISATION_ATOL)


@pytest.mark.parametrize("num_bits", [8, 5])
def test_dmol_single_channel_is_normalised_float32(num_bits):
    rng = np.random.default_rng(3)
    params = random_dmol_params(rng, (), 1, 4).astype(np.float32)
    xs = grid(num_bits)[:, None].astype(np.float32)
    probs = pixel_probs(params, xs, 1, 4, num_bits)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(), 1.0, atol=NORMALISATION_ATOL)


def top_heavy_params(m=2):
    """Blue mass at the top of the range, no autoregressive coupling."""
    params = np.zeros(DMoL.num_params(3, m))
    blue = m + 2 * 3 * m
    params[blue:blue + m] = 1.0
    params[blue + m:blue + 2 * m] = -6.0
    return params


def test_dmol_official_edges_not_normalised_at_8_bits():
    params = top_heavy_params()
    prefix = np.array([0.5, 0.25])
    official = conditional_sum(params, prefix, 2, 8, official_edges=True)
    assert official > 1.5
    default = conditional_sum(params, prefix, 2, 8)
    np.testing.assert_allclose(default, 1.0, atol=NORMALISATION_ATOL)


def test_dmol_official_edges_normalised_at_5_bits():
    rng = np.random.default_rng(4)
    for params in (top_heavy_params(), random_dmol_params(rng, (), 3, 2)):
        for c in range(3):
            total = conditional_sum(params, np.array([0.5, 0.25])[:c], 2, 5,
                                    official_edges=True)
            np.testing.assert_allclose(total, 1.0, atol=NORMALISATION_ATOL)


@pytest.mark.parametrize("num_channels", [1, 2, 3])
@pytest.mark.parametrize("official_edges", [False, True])
def test_dmol_log_prob_matches_numpy(num_channels, official_edges):
    rng = np.random.default_rng(5)
    m, bits = 4, 8
    params = random_dmol_params(rng, (2, 5, 6), num_channels, m)
    x = rng.integers(0, 256, size=(2, 5, 6, num_channels)) / 255.0
    # Put some pixels on the edges and on 254, where the thresholds differ.
    x[:, 0, :, :] = 1.0
    x[:, 1, :, :] = 254.0 / 255.0
    x[:, 2, :, :] = 0.0
    # Log scales below the -7 floor.
    params[:, 3, :, m + m:m + 2 * m] = -9.0
    d = DMoL(params, num_channels, m, bits, official_edges=official_edges)
    assert d.batch_shape == (2,)
    assert d.event_shape == (5, 6, num_channels)
    np.testing.assert_allclose(
        d.log_prob(x).numpy(),
        np_dmol_log_prob(params, x, num_channels, m, bits, official_edges),
        rtol=1e-10)


def test_dmol_log_prob_per_pixel_sums_to_log_prob():
    rng = np.random.default_rng(6)
    params = random_dmol_params(rng, (2, 3, 4), 3, 2).astype(np.float32)
    x = (rng.integers(0, 256, size=(2, 3, 4, 3)) / 255.0).astype(np.float32)
    d = DMoL(params, 3, 2)
    per_pixel = d.log_prob_per_pixel(x)
    assert per_pixel.shape == (2, 3, 4)
    np.testing.assert_allclose(
        tf.reduce_sum(per_pixel, [1, 2]).numpy(), d.log_prob(x).numpy(),
        rtol=1e-6)


@pytest.mark.parametrize("dtype,rtol", [(np.float32, 1e-4),
                                        (np.float64, 1e-10)])
def test_dmol_log_prob_xla_matches_eager(dtype, rtol):
    rng = np.random.default_rng(7)
    params = random_dmol_params(rng, (2, 4, 4), 3, 5).astype(dtype)
    x = (rng.integers(0, 256, size=(2, 4, 4, 3)) / 255.0).astype(dtype)

    def log_prob(p, v):
        return DMoL(p, 3, 5).log_prob(v)

    eager = log_prob(params, x).numpy()
    graph = tf.function(log_prob)(params, x).numpy()
    xla = tf.function(log_prob, jit_compile=True)(params, x).numpy()
    assert xla.dtype == dtype
    np.testing.assert_allclose(graph, eager, rtol=rtol)
    np.testing.assert_allclose(xla, eager, rtol=rtol)


def test_dmol_mean_matches_numpy():
    rng = np.random.default_rng(8)
    m = 3
    params = random_dmol_params(rng, (2, 3, 3), 3, m)
    logits = params[..., :m]
    w = np.exp(logits - np_logsumexp(logits, -1)[..., None])
    means = np.stack(
        [(np_field(params, m, c, 0) * w).sum(-1) for c in range(3)], -1)
    coeffs = np.stack(
        [(np.tanh(np_field(params, m, c, 2)) * w).sum(-1) for c in range(3)],
        -1)
    np.testing.assert_allclose(
        DMoL(params, 3, m).mean().numpy(), np_compose(means, coeffs),
        rtol=1e-10)


def test_dmol_sample_shape_range_and_seed():
    rng = np.random.default_rng(9)
    params = random_dmol_params(rng, (3, 4, 5), 3, 4).astype(np.float32)
    d = DMoL(params, 3, 4)
    a = d.sample(seed=tf.constant([1, 2])).numpy()
    b = d.sample_with_temperature(1.0, seed=tf.constant([1, 2])).numpy()
    c = d.sample(seed=tf.constant([1, 3])).numpy()
    assert a.shape == (3, 4, 5, 3)
    assert a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3
    assert d.sample(2, seed=[4, 5], temperature=0.5).shape == (2, 3, 4, 5, 3)


def test_dmol_sample_autoregressive_composition():
    # Near-deterministic components: samples equal the composed means.
    rng = np.random.default_rng(10)
    params = random_dmol_params(rng, (2, 3, 3), 3, 1)
    for c in range(3):
        params[..., 1 + c * 3 + 1] = -7.0
    coeffs = np.stack(
        [np.tanh(np_field(params, 1, c, 2))[..., 0] for c in range(3)], -1)
    means = np.stack([np_field(params, 1, c, 0)[..., 0] for c in range(3)],
                     -1)
    sample = DMoL(params, 3, 1).sample(seed=[0, 1]).numpy()
    np.testing.assert_allclose(sample, np_compose(means, coeffs), atol=0.01)


def constant_params(h, logits, means, log_scale):
    m = len(logits)
    params = np.zeros((1, h, h, DMoL.num_params(1, m)), np.float32)
    params[..., :m] = logits
    params[..., m:2 * m] = means
    params[..., 2 * m:3 * m] = log_scale
    return params


@pytest.mark.parametrize("official", [False, True])
def test_dmol_sample_temperature_convention(official):
    scale, temperature = 0.05, 0.5
    params = constant_params(256, [0.0], [0.0], math.log(scale))
    d = DMoL(params, 1, 1, official_temperature=official)
    x = 2.0 * d.sample_with_temperature(temperature, seed=[3, 4]).numpy() - 1
    effective = scale / temperature if official else scale * temperature
    # Logistic std is scale * pi / sqrt(3); the relative standard error of
    # the estimate over 65536 draws is ~0.35%.
    np.testing.assert_allclose(
        x.std(), effective * math.pi / math.sqrt(3.0), rtol=0.02)
    assert abs(x.mean()) < 0.01


@pytest.mark.parametrize("official", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.25])
def test_dmol_sample_mixture_weights(temperature, official):
    params = constant_params(
        256, [math.log(0.3), math.log(0.7)], [-0.5, 0.5], -5.0)
    x = DMoL(params, 1, 2, official_temperature=official).sample_with_temperature(
        temperature, seed=[5, 6]).numpy()
    # Gumbel-max on logits / t picks component k with probability
    # proportional to w_k ** (1 / t). The frequency's standard error is
    # below 0.002.
    w = np.array([0.3, 0.7]) ** (1.0 / temperature)
    np.testing.assert_allclose((x > 0.5).mean(), w[1] / w.sum(), atol=0.01)


def np_dmol_sample_from_uniforms(params, num_mixtures, temperature,
                                 official, u_gumbel, u_logistic):
    """The official `DiscMixLogistic.sample(t)`, NHWC, given its uniforms.

    With `official=False` the logistic scale is multiplied by `t` instead of
    divided. `u_gumbel` is `(..., H, W, M)` and `u_logistic` `(..., H, W, 3)`.
    """
    m = num_mixtures
    logits = params[..., :m]
    gumbel = -np.log(-np.log(u_gumbel))
    sel = np.argmax(logits / temperature + gumbel, axis=-1)[..., None]

    def pick(colour, field):
        return np.take_along_axis(np_field(params, m, colour, field), sel, -1)[..., 0]

    means = np.stack([pick(c, 0) for c in range(3)], -1)
    scales = np.exp(np.maximum(np.stack([pick(c, 1) for c in range(3)], -1), -7.0))
    coeffs = np.tanh(np.stack([pick(c, 2) for c in range(3)], -1))
    scales = scales / temperature if official else scales * temperature
    x = means + scales * (np.log(u_logistic) - np.log1p(-u_logistic))
    return np_compose(x, coeffs)


@pytest.mark.parametrize("official", [False, True])
def test_dmol_sample_with_temperature_is_the_official_formula(official):
    # Replays the distribution's own uniform draws through a NumPy transcription
    # of the official sampler, so every pixel is checked exactly: Gumbel-max on
    # logits / t, the logistic scale times (or, officially, divided by) t, and
    # the clamped channel-autoregressive composition.
    rng = np.random.default_rng(13)
    m, temperature, seed = 3, 0.6, tf.constant([7, 8])
    params = random_dmol_params(rng, (2, 5, 6), 3, m).astype(np.float32)
    d = DMoL(params, 3, m, official_temperature=official)
    x = d.sample_with_temperature(temperature, seed=seed).numpy()
    gumbel_seed, logistic_seed = tfp.random.split_seed(
        tfp.random.sanitize_seed(seed), n=2)
    uniform = dict(minval=dist_lib.UNIFORM_EPS, maxval=1.0 - dist_lib.UNIFORM_EPS)
    u_gumbel = tf.random.stateless_uniform(
        (1, 2, 5, 6, m), seed=gumbel_seed, **uniform).numpy()[0]
    u_logistic = tf.random.stateless_uniform(
        (1, 2, 5, 6, 3), seed=logistic_seed, **uniform).numpy()[0]
    expected = np_dmol_sample_from_uniforms(
        params.astype(np.float64), m, temperature, official,
        u_gumbel.astype(np.float64), u_logistic.astype(np.float64))
    np.testing.assert_allclose(x, expected, atol=2e-6)
    assert 0.02 < (x == 1.0).mean() + (x == 0.0).mean() < 0.9  # clamps exercised


@pytest.mark.parametrize("official", [False, True])
@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_dmol_sample_residuals_are_logistic_at_temperature(temperature, official):
    # One component, three channels with autoregressive coefficients. Taking
    # the means and the coefficient terms off a sample leaves, per channel, a
    # logistic with scale s * t (official: s / t), whose CDF is sigmoid(r / scale).
    h, scale = 128, 0.04
    means = np.array([0.2, -0.1, 0.05])
    raw_coeffs = np.array([0.5, -0.3, 0.4])  # (G|R), (B|R), (B|G)
    params = np.zeros((1, h, h, DMoL.num_params(3, 1)), np.float32)
    for c in range(3):
        params[..., 1 + 3 * c:4 + 3 * c] = [means[c], math.log(scale),
                                            raw_coeffs[c]]
    d = DMoL(params, 3, 1, official_temperature=official)
    x = 2.0 * d.sample_with_temperature(temperature, seed=[9, 10]).numpy() - 1.0
    a, b, c = np.tanh(raw_coeffs)
    residuals = [
        x[..., 0] - means[0],
        x[..., 1] - means[1] - a * x[..., 0],
        x[..., 2] - means[2] - b * x[..., 0] - c * x[..., 1],
    ]
    effective = scale / temperature if official else scale * temperature
    points = np.array([-3.0, -1.5, -0.5, 0.0, 0.5, 1.5, 3.0])
    for r in residuals:
        empirical = (r.reshape(-1, 1) <= points * effective).mean(0)
        # 16384 draws: the standard error of each frequency is below 0.004.
        np.testing.assert_allclose(empirical, np_sigmoid(points), atol=0.015)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), [0.5, 0.5]])
def test_sample_temperature_must_be_a_positive_scalar(temperature):
    params = np.zeros((1, 2, 2, DMoL.num_params(1, 2)), np.float32)
    for d in (DMoL(params, 1, 2), dist_lib.NormalDecoder(np.zeros((1, 2, 2, 2)), 1)):
        with pytest.raises(ValueError, match="positive scalar"):
            d.sample_with_temperature(temperature, seed=[1, 2])
        with pytest.raises(ValueError, match="positive scalar"):
            d.sample(seed=[1, 2], temperature=temperature)


def test_dmol_argument_validation():
    with pytest.raises(ValueError, match="num_channels"):
        DMoL(np.zeros((1, 2, 2, DMoL.num_params(4, 2)), np.float32), 4, 2)
    with pytest.raises(ValueError, match="last axis"):
        DMoL(np.zeros((1, 2, 2, 11), np.float32), 3, 2)
    d = DMoL(np.zeros((1, 2, 2, DMoL.num_params(1, 2)), np.float32), 1, 2,
             validate_args=True)
    with pytest.raises(tf.errors.InvalidArgumentError):
        d.log_prob(np.full((1, 2, 2, 1), 1.5, np.float32))


def test_num_params():
    assert DMoL.num_params(3, 10) == 100
    assert DMoL.num_params(1, 10) == 40


# ---------------------------------------------------------------------------
# Latent normals.
# ---------------------------------------------------------------------------


def np_soft_clamp(x):
    return 5.0 * np.tanh(x / 5.0)


def test_soft_clamp():
    x = np.array([-100.0, -3.0, 0.0, 2.0, 7.0])
    np.testing.assert_allclose(
        dist_lib.soft_clamp(x).numpy(), np_soft_clamp(x), rtol=1e-12)
    np.testing.assert_allclose(
        dist_lib.soft_clamp(x, bound=2.0).numpy(), 2.0 * np.tanh(x / 2.0),
        rtol=1e-12)


def test_normal_from_params_closed_form():
    rng = np.random.default_rng(11)
    mu, ls = rng.normal(scale=4.0, size=(2, 7))
    for t in (1.0, 0.6):
        d = dist_lib.normal_from_params(mu, ls, temperature=t)
        np.testing.assert_allclose(d.loc.numpy(), np_soft_clamp(mu),
                                   rtol=1e-12)
        np.testing.assert_allclose(
            d.scale.numpy(), (np.exp(np_soft_clamp(ls)) + 1e-2) * t,
            rtol=1e-12)


def test_split_normal_params():
    params = np.arange(24.0).reshape(1, 2, 2, 6)
    mu, ls = dist_lib.split_normal_params(params)
    np.testing.assert_array_equal(mu.numpy(), params[..., :3])
    np.testing.assert_array_equal(ls.numpy(), params[..., 3:])


def test_residual_normal_sums_raw_parameters():
    rng = np.random.default_rng(12)
    pm, pl, dm, dl = rng.normal(scale=4.0, size=(4, 6))
    q = dist_lib.residual_normal(pm, pl, dm, dl)
    np.testing.assert_allclose(q.loc.numpy(), np_soft_clamp(pm + dm),
                               rtol=1e-12)
    np.testing.assert_allclose(
        q.scale.numpy(), np.exp(np_soft_clamp(pl + dl)) + 1e-2, rtol=1e-12)


def test_standard_normal_prior():
    z = tf.zeros((2, 3, 3, 4))
    for t in (1.0, 0.7):
        prior = dist_lib.standard_normal_prior(z, temperature=t)
        assert prior.batch_shape == (2, 3, 3, 4)
        np.testing.assert_allclose(prior.loc.numpy(), 0.0)
        np.testing.assert_allclose(prior.scale.numpy(), 1.01 * t, rtol=1e-6)


def test_residual_normal_kl_matches_monte_carlo():
    rng = np.random.default_rng(13)
    pm, pl, dm, dl = rng.normal(size=(4, 5))
    prior = dist_lib.normal_from_params(pm, pl)
    posterior = dist_lib.residual_normal(pm, pl, dm, dl)
    analytic = tfd.kl_divergence(posterior, prior).numpy()
    n = 200_000
    z = posterior.sample(n, seed=[7, 8])
    diffs = (posterior.log_prob(z) - prior.log_prob(z)).numpy()
    standard_error = diffs.std(axis=0) / math.sqrt(n)
    assert np.all(np.abs(diffs.mean(axis=0) - analytic)
                  < 4.0 * standard_error + 1e-12)
    assert np.all(analytic > 0.0)


# ---------------------------------------------------------------------------
# Other decoders and the factory.
# ---------------------------------------------------------------------------


def test_bernoulli_log_prob_and_mean():
    rng = np.random.default_rng(14)
    logits = rng.normal(scale=3.0, size=(2, 4, 5, 1)).astype(np.float32)
    x = rng.integers(0, 2, size=logits.shape).astype(np.float32)
    d = dist_lib.bernoulli_decoder(logits)
    p = np_sigmoid(logits.astype(np.float64))
    expected = (x * np.log(p) + (1 - x) * np.log1p(-p)).sum(axis=(1, 2, 3))
    assert d.event_shape == (4, 5, 1)
    np.testing.assert_allclose(d.log_prob(x).numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(d.mean().numpy(), p, rtol=1e-5)


def test_normal_decoder_log_prob_matches_numpy():
    rng = np.random.default_rng(15)
    params = rng.normal(scale=2.0, size=(2, 3, 4, 6))
    x = rng.integers(0, 256, size=(2, 3, 4, 3)) / 255.0
    mu = np_soft_clamp(params[..., :3])
    sigma = np.exp(np_soft_clamp(params[..., 3:])) + 1e-2
    y = 2.0 * x - 1.0
    expected = (-0.5 * ((y - mu) / sigma) ** 2 - np.log(sigma)
                - 0.5 * np.log(2 * np.pi)).sum(axis=(1, 2, 3))
    d = dist_lib.NormalDecoder(params, num_channels=3)
    assert d.batch_shape == (2,)
    assert d.event_shape == (3, 4, 3)
    np.testing.assert_allclose(d.log_prob(x).numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(d.mean().numpy(),
                               np.clip(mu, -1, 1) / 2 + 0.5, rtol=1e-10)


def test_normal_decoder_sample_temperature():
    params = np.zeros((1, 128, 128, 2), np.float32)
    params[..., 1] = math.log(0.1)
    d = dist_lib.NormalDecoder(params, num_channels=1)
    sigma = math.exp(np_soft_clamp(math.log(0.1))) + 1e-2
    for t in (1.0, 0.5):
        x = d.sample_with_temperature(t, seed=[1, 2]).numpy()
        assert x.shape == (1, 128, 128, 1)
        assert x.min() >= 0.0 and x.max() <= 1.0
        np.testing.assert_allclose((2 * x - 1).std(), sigma * t, rtol=0.03)


def test_decoder_num_channels():
    assert dist_lib.decoder_num_channels("bernoulli", 1, 10) == 1
    assert dist_lib.decoder_num_channels("dmol", 3, 10) == 100
    assert dist_lib.decoder_num_channels("dmol", 1, 5) == 20
    assert dist_lib.decoder_num_channels("normal", 3, 10) == 6
    with pytest.raises(ValueError, match="likelihood"):
        dist_lib.decoder_num_channels("gaussian", 3, 10)


@pytest.mark.parametrize(
    "likelihood,num_channels,expected_type",
    [("bernoulli", 1, tfd.Independent), ("dmol", 3, DMoL),
     ("normal", 3, dist_lib.NormalDecoder)])
def test_make_decoder_distribution(likelihood, num_channels, expected_type):
    p = dist_lib.decoder_num_channels(likelihood, num_channels, 4)
    params = tf.zeros((2, 5, 6, p))
    d = dist_lib.make_decoder_distribution(
        likelihood, params, num_channels, 4, 5, official_edges=True)
    assert isinstance(d, expected_type)
    assert d.batch_shape == (2,)
    assert d.event_shape == (5, 6, num_channels)
    log_prob = d.log_prob(tf.zeros((2, 5, 6, num_channels)))
    assert log_prob.shape == (2,)
    # All-zero parameters scoring black images, per closed form.
    pixels = 5 * 6 * num_channels
    if likelihood == "bernoulli":  # p = sigmoid(0) = 1/2
        expected = pixels * math.log(0.5)
    elif likelihood == "normal":  # y = 2 * 0 - 1 under N(0, exp(0) + 0.01)
        sigma = 1.01
        expected = pixels * (-0.5 / sigma**2 - math.log(sigma) - 0.5 * math.log(2 * math.pi))
    else:
        expected = np_dmol_log_prob(
            np.zeros((1, 5, 6, p)), np.zeros((1, 5, 6, 3)), 3, 4, 5, official_edges=True
        )[0]
    np.testing.assert_allclose(log_prob.numpy(), [expected, expected], rtol=1e-5)
    if likelihood == "dmol":
        assert d.num_bits == 5 and d.official_edges
        assert not d.official_temperature


def test_make_decoder_distribution_rejects_bad_input():
    with pytest.raises(ValueError, match="likelihood"):
        dist_lib.make_decoder_distribution("poisson", tf.zeros((1, 2, 2, 1)),
                                           1, 1, 8)
    with pytest.raises(ValueError, match="last axis"):
        dist_lib.make_decoder_distribution("bernoulli",
                                           tf.zeros((1, 2, 2, 3)), 1, 1, 8)


# ---------------------------------------------------------------------------
# Data helpers.
# ---------------------------------------------------------------------------


def test_reduce_bits():
    k = np.arange(256)
    x = (k / 255.0).astype(np.float32)
    reduced = inputs.reduce_bits(x, 5).numpy()
    np.testing.assert_allclose(
        reduced, np.floor(x * 255.0 / 2**3) / 31.0, rtol=1e-6)
    np.testing.assert_allclose(reduced, (k // 8) / 31.0, rtol=1e-6)
    np.testing.assert_array_equal(np.unique(reduced * 31).round(4),
                                  np.arange(32.0))
    assert inputs.reduce_bits(x, 8) is x


def test_nats_to_bits_per_dim():
    dims = 32 * 32 * 3
    assert dist_lib.nats_to_bits_per_dim(3.0 * math.log(2.0) * dims,
                                         dims) == pytest.approx(3.0)
    np.testing.assert_allclose(
        dist_lib.nats_to_bits_per_dim(tf.constant([math.log(2.0) * 784]),
                                      784).numpy(), [1.0], rtol=1e-6)
