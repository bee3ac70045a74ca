import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_nvae.training.objectives import SpectralRegularizer
from keras_nvae.training.objectives import balance_kl
from keras_nvae.training.objectives import batchnorm_regularizer
from keras_nvae.training.objectives import kl_balancing_alphas
from keras_nvae.training.objectives import kl_warmup_coefficient
from keras_nvae.training.objectives import regularization_coefficient


def _matrix_with_spectrum(rng, rows, cols, singular_values):
    """Random matrix with the given leading singular values."""
    k = min(rows, cols)
    left, _ = np.linalg.qr(rng.normal(size=(rows, k)))
    right, _ = np.linalg.qr(rng.normal(size=(cols, k)))
    values = np.zeros(k)
    values[: len(singular_values)] = singular_values
    return (left * values) @ right.T


def _gapped_matrix(rng, rows, cols):
    """Matrix whose top singular value is twice the second one."""
    top = rng.uniform(1.0, 4.0)
    rest = top * 0.5 * np.linspace(1.0, 0.1, min(rows, cols) - 1)
    return _matrix_with_spectrum(rng, rows, cols, [top, *rest]).astype(
        np.float32
    )


def _top_singular_value(matrix):
    return np.linalg.svd(np.asarray(matrix, np.float64), compute_uv=False)[0]


def _normalize(x, epsilon=1e-3):
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, epsilon)


def _numpy_power_iteration(u, v, weights, num_iterations):
    for _ in range(num_iterations):
        v = _normalize(np.einsum("nr,nrc->nc", u, weights))
        u = _normalize(np.einsum("nrc,nc->nr", weights, v))
    return u, v


# KL warm-up.


@pytest.mark.parametrize("step", [0, 5, 50, 1000, 2000, 3000, 5000, 10000])
def test_kl_warmup_coefficient_matches_closed_form(step):
    total = 10000
    expected = max(min((step - 1e-4 * total) / (0.3 * total), 1.0), 1e-4)
    beta = kl_warmup_coefficient(tf.constant(step, tf.int64), total)
    assert beta.dtype == tf.float32
    np.testing.assert_allclose(float(beta), expected, rtol=1e-6, atol=1e-7)


def test_kl_warmup_coefficient_custom_portions():
    total = 1000
    for step in [0, 99, 100, 150, 300, 301, 1000]:
        expected = max(min((step - 100.0) / 200.0, 1.0), 0.01)
        beta = kl_warmup_coefficient(
            step,
            total,
            anneal_portion=0.2,
            const_portion=0.1,
            min_coeff=0.01,
        )
        np.testing.assert_allclose(float(beta), expected, rtol=1e-6)


def test_kl_warmup_coefficient_follows_step_variable_in_graph():
    step = tf.Variable(0, dtype=tf.int64)

    @tf.function(jit_compile=True)
    def advance():
        step.assign_add(500)
        return kl_warmup_coefficient(step, 10000)

    values = [float(advance()) for _ in range(8)]
    expected = [
        max(min((500 * (i + 1) - 1.0) / 3000.0, 1.0), 1e-4) for i in range(8)
    ]
    np.testing.assert_allclose(values, expected, rtol=1e-6)


# KL balancing.


@pytest.mark.parametrize(
    "groups_per_scale, expected",
    [
        ([30], [1.0] * 30),
        ([10, 5], [1.0] * 5 + [2.0] * 10),
        ([20, 10, 5], [1.0] * 5 + [2.0] * 10 + [4.0] * 20),
        (
            [16, 8, 4, 4, 4],
            [1.0] * 4 + [4.0] * 4 + [16.0] * 4 + [32.0] * 8 + [64.0] * 16,
        ),
    ],
)
def test_kl_balancing_alphas_known_values(groups_per_scale, expected):
    alphas = kl_balancing_alphas(groups_per_scale)
    assert alphas.dtype == np.float32
    np.testing.assert_array_equal(alphas, np.array(expected, np.float32))


def _numpy_balance_kl(kl, beta, alphas, balance=True):
    if balance and beta < 1.0:
        coeffs = np.mean(np.abs(kl), axis=0) + 0.01
        coeffs = coeffs / alphas * np.sum(coeffs)
        coeffs = coeffs / np.mean(coeffs)
    else:
        coeffs = np.ones(kl.shape[1])
    return beta * np.sum(kl * coeffs, axis=1), coeffs


@pytest.mark.parametrize("beta", [1e-4, 0.3, 0.999, 1.0])
@pytest.mark.parametrize("balance", [True, False])
def test_balance_kl_matches_numpy(beta, balance):
    rng = np.random.default_rng(0)
    alphas = kl_balancing_alphas([10, 5])
    kl = rng.gamma(2.0, size=(6, alphas.shape[0])).astype(np.float32)
    kl[:, 3] = 0.0
    kl[1, 7] = -0.5
    weighted, coeffs = balance_kl(kl, tf.constant(beta), alphas, balance)
    expected, expected_coeffs = _numpy_balance_kl(
        kl.astype(np.float64), beta, alphas, balance
    )
    assert weighted.shape == (6,)
    assert coeffs.shape == (15,)
    np.testing.assert_allclose(weighted, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(coeffs, expected_coeffs, rtol=1e-5)


def test_balance_kl_coefficients_are_stop_gradiented():
    rng = np.random.default_rng(1)
    alphas = kl_balancing_alphas([20, 10, 5])
    kl = tf.constant(rng.gamma(2.0, size=(4, alphas.shape[0])), tf.float32)
    beta = tf.constant(0.25)
    with tf.GradientTape() as tape:
        tape.watch(kl)
        weighted, coeffs = balance_kl(kl, beta, alphas)
        loss = tf.reduce_sum(weighted)
    gradient = tape.gradient(loss, kl)
    expected = np.broadcast_to(0.25 * coeffs.numpy(), kl.shape)
    np.testing.assert_allclose(gradient, expected, rtol=1e-6)


def test_balance_kl_switches_on_tensor_beta_in_graph():
    rng = np.random.default_rng(2)
    alphas = kl_balancing_alphas([10, 5])
    kl = rng.gamma(2.0, size=(3, alphas.shape[0])).astype(np.float32)
    fn = tf.function(
        lambda kl, beta: balance_kl(kl, beta, alphas), jit_compile=True
    )
    for beta in [0.5, 1.0]:
        weighted, coeffs = fn(tf.constant(kl), tf.constant(beta))
        expected, expected_coeffs = _numpy_balance_kl(
            kl.astype(np.float64), beta, alphas
        )
        np.testing.assert_allclose(weighted, expected, rtol=1e-5)
        np.testing.assert_allclose(coeffs, expected_coeffs, rtol=1e-5)


# Spectral regularization.

SHAPES = [(16, 9), (16, 9), (4, 12), (7, 7), (16, 9), (32, 5)]


def _gapped_matrices(seed, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [_gapped_matrix(rng, rows, cols) for rows, cols in shapes]


def test_spectral_regularizer_converges_on_first_call():
    matrices = _gapped_matrices(0)
    regularizer = SpectralRegularizer(seed=3)
    estimate = regularizer(matrices, training=True)
    expected = sum(_top_singular_value(m) for m in matrices)
    np.testing.assert_allclose(float(estimate), expected, rtol=1e-3)

    # Each stored (u, v) pair gives the top singular value of its matrix.
    weights = regularizer.non_trainable_weights
    for group, indices in enumerate([[0, 1, 4], [2], [3], [5]]):
        u = weights[2 * group].numpy()
        v = weights[2 * group + 1].numpy()
        for row, index in enumerate(indices):
            sigma = u[row] @ matrices[index] @ v[row]
            np.testing.assert_allclose(
                sigma, _top_singular_value(matrices[index]), rtol=1e-3
            )


def test_spectral_regularizer_groups_state_by_shape():
    regularizer = SpectralRegularizer()
    regularizer.build(SHAPES)
    shapes = [tuple(w.shape) for w in regularizer.non_trainable_weights]
    assert shapes == [
        (3, 16),
        (3, 9),
        (1, 4),
        (1, 12),
        (1, 7),
        (1, 7),
        (1, 32),
        (1, 5),
        (),
    ]
    assert regularizer.trainable_weights == []
    for weight in regularizer.non_trainable_weights[:-1]:
        norms = np.linalg.norm(weight.numpy(), axis=-1)
        np.testing.assert_allclose(norms, 1.0, rtol=1e-5)


def test_spectral_regularizer_iteration_counts_match_numpy():
    matrices = _gapped_matrices(1, [(6, 4), (6, 4), (3, 8)])
    regularizer = SpectralRegularizer(
        num_power_iterations=3, first_call_multiplier=5, seed=0
    )
    regularizer.build([m.shape for m in matrices])
    u0, v0, u1, v1 = [w.numpy() for w in regularizer.non_trainable_weights[:4]]
    groups = [np.stack(matrices[:2]), matrices[2][None]]
    state = [(u0, v0), (u1, v1)]
    for num_iterations in [15, 3, 3]:
        estimate = regularizer(matrices, training=True)
        state = [
            _numpy_power_iteration(u, v, w, num_iterations)
            for (u, v), w in zip(state, groups)
        ]
        expected = sum(
            np.einsum("nr,nrc,nc->", u, w, v)
            for (u, v), w in zip(state, groups)
        )
        np.testing.assert_allclose(float(estimate), expected, rtol=1e-5)
        stored = [w.numpy() for w in regularizer.non_trainable_weights[:4]]
        np.testing.assert_allclose(stored[0], state[0][0], atol=1e-5)
        np.testing.assert_allclose(stored[3], state[1][1], atol=1e-5)
    assert int(regularizer.non_trainable_weights[-1].numpy()) == 1


def test_spectral_regularizer_state_persists_and_improves():
    rng = np.random.default_rng(4)
    matrix = _matrix_with_spectrum(
        rng, 40, 30, [1.0, 0.97, *np.linspace(0.5, 0.1, 28)]
    ).astype(np.float32)
    exact = _top_singular_value(matrix)
    regularizer = SpectralRegularizer(seed=5)
    errors = []
    for _ in range(20):
        estimate = float(regularizer([matrix], training=True))
        errors.append(exact - estimate)
    errors = np.array(errors)
    assert np.all(errors > -1e-5)
    assert np.all(np.diff(errors) <= 1e-6)
    assert errors[-1] < 0.5 * errors[0]


def test_spectral_regularizer_inference_uses_current_state():
    matrices = _gapped_matrices(2, [(5, 8)])
    regularizer = SpectralRegularizer(seed=6)
    regularizer.build([(5, 8)])
    u, v = [w.numpy() for w in regularizer.non_trainable_weights[:2]]
    estimate = regularizer(matrices, training=False)
    np.testing.assert_allclose(
        float(estimate), float(u[0] @ matrices[0] @ v[0]), rtol=1e-5
    )
    np.testing.assert_array_equal(regularizer.non_trainable_weights[0], u)
    assert int(regularizer.non_trainable_weights[-1].numpy()) == 0


def test_spectral_regularizer_gradient_is_u_v_transpose():
    matrices = [tf.Variable(m) for m in _gapped_matrices(3, [(8, 6), (8, 6)])]
    regularizer = SpectralRegularizer(seed=7)
    with tf.GradientTape() as tape:
        loss = regularizer(matrices, training=True)
    gradients = tape.gradient(loss, matrices)
    u, v = [w.numpy() for w in regularizer.non_trainable_weights[:2]]
    for index, gradient in enumerate(gradients):
        np.testing.assert_allclose(
            gradient, np.outer(u[index], v[index]), atol=1e-6
        )


@pytest.mark.parametrize("jit_compile", [False, True])
def test_spectral_regularizer_in_compiled_function(jit_compile):
    matrices = _gapped_matrices(5)
    eager = SpectralRegularizer(seed=8)
    compiled = SpectralRegularizer(seed=8)
    compiled.build(SHAPES)
    fn = tf.function(
        lambda mats: compiled(mats, training=True), jit_compile=jit_compile
    )
    for _ in range(3):
        expected = eager(matrices, training=True)
        actual = fn([tf.constant(m) for m in matrices])
        np.testing.assert_allclose(actual, expected, rtol=1e-5)
    for a, b in zip(
        eager.non_trainable_weights, compiled.non_trainable_weights
    ):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_spectral_regularizer_under_mirrored_strategy():
    matrices = _gapped_matrices(6, [(9, 4), (3, 3)])
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        regularizer = SpectralRegularizer(seed=9)
        regularizer.build([m.shape for m in matrices])

    @tf.function
    def step():
        return strategy.run(lambda: regularizer(matrices, training=True))

    estimate = strategy.reduce("SUM", step(), axis=None)
    expected = sum(_top_singular_value(m) for m in matrices)
    np.testing.assert_allclose(float(estimate), expected, rtol=1e-3)
    assert int(regularizer.non_trainable_weights[-1].numpy()) == 1


def test_spectral_regularizer_serialization():
    regularizer = SpectralRegularizer(
        num_power_iterations=2, first_call_multiplier=3, seed=11
    )
    matrices = _gapped_matrices(7, [(5, 4), (2, 6)])
    regularizer(matrices, training=True)
    config = keras.saving.serialize_keras_object(regularizer)
    restored = keras.saving.deserialize_keras_object(config)
    assert isinstance(restored, SpectralRegularizer)
    assert restored.get_config() == regularizer.get_config()
    assert restored.built
    restored.set_weights(regularizer.get_weights())
    np.testing.assert_allclose(
        restored(matrices, training=False),
        regularizer(matrices, training=False),
        rtol=1e-6,
    )


def test_spectral_regularizer_rejects_non_matrices():
    with pytest.raises(ValueError, match="2-D"):
        SpectralRegularizer().build([(3, 3, 3)])


# Batch-norm regularization and coefficient.


def test_batchnorm_regularizer_all_ones():
    gammas = [np.ones((n,), np.float32) for n in [4, 8, 16]]
    np.testing.assert_allclose(float(batchnorm_regularizer(gammas)), 3.0)


def test_batchnorm_regularizer_matches_numpy():
    rng = np.random.default_rng(8)
    # Repeated lengths are stacked internally; order and grouping must not matter.
    gammas = [rng.normal(size=(n,)).astype(np.float32) for n in [3, 5, 3, 7, 5]]
    expected = sum(np.max(np.abs(g)) for g in gammas)
    variables = [tf.Variable(g) for g in gammas]
    with tf.GradientTape() as tape:
        value = batchnorm_regularizer(variables)
    np.testing.assert_allclose(float(value), expected, rtol=1e-6)
    # d/dgamma max|gamma| = sign(gamma) at the arg-max, 0 elsewhere.
    for g, grad in zip(gammas, tape.gradient(value, variables)):
        one_hot = np.zeros_like(g)
        one_hot[np.argmax(np.abs(g))] = np.sign(g[np.argmax(np.abs(g))])
        np.testing.assert_allclose(grad.numpy(), one_hot)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 1.0])
def test_regularization_coefficient_annealed(beta):
    coeff = regularization_coefficient(
        tf.constant(beta), 1e-2, weight_decay_norm_init=10.0, anneal=True
    )
    expected = math.exp((1 - beta) * math.log(10.0) + beta * math.log(1e-2))
    np.testing.assert_allclose(float(coeff), expected, rtol=1e-5)


def test_regularization_coefficient_constant():
    coeff = regularization_coefficient(tf.constant(0.3), 1e-2)
    np.testing.assert_allclose(float(coeff), 1e-2)


def test_regularization_coefficient_rejects_non_positive_when_annealed():
    with pytest.raises(ValueError, match="positive"):
        regularization_coefficient(0.5, 0.0, anneal=True)
    with pytest.raises(ValueError, match="positive"):
        regularization_coefficient(0.5, 1e-2, weight_decay_norm_init=0.0,
                                   anneal=True)
