"""Tests for keras_nvae.flows (NVAE inverse-autoregressive flow cells)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from harness import Reference
from harness import TestCase
from keras_nvae.layers.flows import (
    IAFCell,
    IAFShiftBijector,
    MaskedConv2D,
    PairedIAFCell,
    channel_mask,
    conv_mask,
)

tfb = tfp.bijectors
tfd = tfp.distributions

H, W, N = 4, 4, 2
# Keras sublayer -> official parameter prefix inside `CellAR`.
OFFICIAL_NAMES = {
    "conv_a": "conv.convz.0",
    "conv_b": "conv.convz.2",
    "conv_mu": "mu.conv_0",
}


def reference_mask(k, c_in, groups, c_out, zero_diag, mirror):
    """Element-wise restatement of the official mask rules, Keras layout."""
    m = (k - 1) // 2
    mask = np.zeros((k, k, c_in // groups, c_out), np.float32)
    for a in range(k):
        for b in range(k):
            row, col = (k - 1 - a, k - 1 - b) if mirror else (a, b)
            for ci in range(c_in // groups):
                for co in range(c_out):
                    if row < m or (row == m and col < m):
                        allowed = True
                    elif row == m and col == m:
                        if groups == c_in:
                            allowed = not zero_diag
                        elif c_out >= c_in:
                            group = co // (c_out // c_in)
                            allowed = ci < group or (ci == group and not zero_diag)
                        else:
                            ratio = c_in // c_out
                            allowed = ci < co * ratio or (
                                ci < (co + 1) * ratio and not zero_diag
                            )
                    else:
                        allowed = False
                    mask[a, b, ci, co] = float(allowed)
    return mask


@pytest.mark.parametrize("mirror", [False, True])
@pytest.mark.parametrize("zero_diag", [False, True])
@pytest.mark.parametrize(
    "k, c_in, groups, c_out",
    [
        (3, 2, 1, 12),  # c_out > c_in (IAF input conv)
        (3, 3, 1, 3),  # c_out == c_in
        (1, 12, 1, 2),  # c_in > c_out (IAF output conv)
        (3, 8, 1, 4),
        (5, 12, 12, 12),  # depthwise
    ],
)
def test_mask_matches_rules(k, c_in, groups, c_out, zero_diag, mirror):
    conv = MaskedConv2D(
        c_out, k, groups=groups, zero_diag=zero_diag, mirror=mirror
    )
    expected = reference_mask(k, c_in, groups, c_out, zero_diag, mirror)
    np.testing.assert_array_equal(conv.kernel_mask(c_in), expected)
    torch_layout = conv_mask(k, c_in, groups, c_out, zero_diag, mirror)
    np.testing.assert_array_equal(
        torch_layout, np.transpose(expected, (3, 2, 0, 1))
    )


def test_channel_mask_examples():
    np.testing.assert_array_equal(
        channel_mask(2, 1, 4, zero_diag=True),
        [[0, 0], [0, 0], [1, 0], [1, 0]],
    )
    np.testing.assert_array_equal(
        channel_mask(4, 1, 2, zero_diag=False),
        [[1, 1, 0, 0], [1, 1, 1, 1]],
    )
    np.testing.assert_array_equal(
        channel_mask(3, 3, 3, zero_diag=True), np.zeros((3, 1))
    )
    with pytest.raises(ValueError):
        channel_mask(3, 1, 4, zero_diag=False)


def test_masked_conv_applies_mask():
    conv = MaskedConv2D(6, 3, zero_diag=True)
    conv.build((None, H, W, N))
    mask = conv.kernel_mask(N)
    kernel = conv.normalized_kernel().numpy()
    np.testing.assert_array_equal(kernel[mask == 0], 0.0)
    assert np.all(kernel[mask == 1] != 0.0)
    masked = conv.kernel.numpy() * mask
    np.testing.assert_allclose(
        conv.log_weight_norm.numpy(),
        np.log(np.sqrt((masked**2).sum(axis=(0, 1, 2))) + 1e-2),
        rtol=1e-5,
    )


def perturb(layer, seed=0):
    """Moves all weights far from their initialisation."""
    rng = np.random.default_rng(seed)
    for variable in layer.weights:
        if "log_weight_norm" in variable.path:
            value = rng.uniform(-0.5, 0.5, variable.shape)
        else:
            value = rng.normal(size=variable.shape)
        variable.assign(value.astype(variable.dtype))


def built_cell(mirror, seed=0):
    cell = IAFCell(mirror=mirror)
    cell.build((None, H, W, N))
    perturb(cell, seed)
    return cell


def flat_jacobian(fn, z):
    with tf.GradientTape() as tape:
        tape.watch(z)
        out = fn(z)
    jac = tape.jacobian(out, z)
    size = int(np.prod(z.shape))
    return jac.numpy().reshape(size, size)


def order_keys(mirror):
    h, w, c = np.meshgrid(np.arange(H), np.arange(W), np.arange(N), indexing="ij")
    if mirror:
        pixel = (H - 1 - h) * W + (W - 1 - w)
    else:
        pixel = h * W + w
    return (pixel * N + c).reshape(-1)


@pytest.mark.parametrize("mirror", [False, True])
def test_shift_is_strictly_autoregressive(mirror):
    cell = built_cell(mirror)
    z = tf.random.normal((1, H, W, N), seed=1)
    jac = flat_jacobian(cell.shift, z)
    order = np.argsort(order_keys(mirror))
    jac = jac[np.ix_(order, order)]  # rows/cols in autoregressive order
    nonzero = np.abs(jac) > 1e-7
    assert not np.any(np.triu(nonzero)), "shift depends on a later element"
    # Every element but the first depends on some earlier element.
    assert not np.any(nonzero[0])
    assert np.all(nonzero[1:].any(axis=1))
    # A mirrored cell is not triangular in raster order (and vice versa).
    raster = flat_jacobian(cell.shift, z)
    assert np.any(np.triu(np.abs(raster) > 1e-7)) == mirror


def test_paired_cell_unit_determinant():
    paired = PairedIAFCell()
    paired.build((None, H, W, N))
    perturb(paired)
    z = tf.random.normal((1, H, W, N), seed=2)
    jac = flat_jacobian(lambda x: paired(x)[0], z)
    assert np.abs(jac - np.eye(len(jac))).max() > 1e-2  # non-trivial flow
    sign, logdet = np.linalg.slogdet(jac.astype(np.float64))
    assert sign == 1.0
    assert abs(logdet) < 1e-5


def test_cell_call_and_paired_order():
    paired = PairedIAFCell()
    paired.build((None, H, W, N))
    perturb(paired)
    z = tf.random.normal((2, H, W, N), seed=3)
    new_z, log_det = paired(z)
    z1 = z - paired.cell1.shift(z)
    expected = z1 - paired.cell2.shift(z1)
    np.testing.assert_allclose(new_z, expected, atol=1e-6)
    np.testing.assert_allclose(paired.cell1(z), z1, atol=1e-6)
    assert log_det.shape == z.shape
    np.testing.assert_array_equal(log_det, 0.0)


def test_transform_is_the_call_in_the_dtype_of_z():
    paired = PairedIAFCell()
    paired.build((None, H, W, N))
    perturb(paired, seed=17)
    z = tf.random.normal((2, H, W, N), seed=18)
    np.testing.assert_array_equal(paired.transform(z), paired(z)[0])
    z64 = tf.cast(z, tf.float64)
    flowed = paired.transform(z64)
    assert flowed.dtype == tf.float64
    # Only the shifts are computed in float32; the subtractions are float64.
    mu1 = tf.cast(paired.cell1.shift(z64), tf.float64)
    expected = (z64 - mu1) - tf.cast(paired.cell2.shift(z64 - mu1), tf.float64)
    np.testing.assert_array_equal(flowed, expected)
    np.testing.assert_allclose(flowed, paired(z)[0], atol=1e-5)


def test_bijector_forward_and_log_det():
    cell = built_cell(mirror=True, seed=4)
    z = tf.random.normal((2, H, W, N), seed=5)
    bijector = IAFShiftBijector(cell)
    y = bijector.forward(z)
    np.testing.assert_allclose(y, cell(z), atol=1e-6)
    # TFP's cache inverts forward results; a fresh tensor is not inverted.
    np.testing.assert_array_equal(bijector.inverse(y), z)
    with pytest.raises(NotImplementedError):
        bijector.inverse(tf.identity(y))
    assert float(bijector.forward_log_det_jacobian(z, event_ndims=3)) == 0.0
    assert float(bijector.inverse_log_det_jacobian(y, event_ndims=3)) == 0.0
    assert bijector.is_constant_jacobian


def test_paired_cells_as_a_transformed_distribution():
    paired = PairedIAFCell()
    paired.build((None, H, W, N))
    perturb(paired, seed=6)
    q = tfd.Independent(
        tfd.Normal(
            tf.random.normal((2, H, W, N), seed=7),
            tf.exp(tf.random.normal((2, H, W, N), seed=8) * 0.3),
        ),
        reinterpreted_batch_ndims=3,
    )
    # `tfb.Chain` applies the last bijector of the list first.
    bijector = tfb.Chain(
        [IAFShiftBijector(paired.cell2), IAFShiftBijector(paired.cell1)]
    )
    flowed = tfd.TransformedDistribution(q, bijector)
    z0 = q.sample(seed=9)
    y = bijector.forward(z0)
    np.testing.assert_allclose(y, paired(z0)[0], atol=1e-6)
    # Volume preserving: the flowed density at y is the base density at z0.
    np.testing.assert_allclose(flowed.log_prob(y), q.log_prob(z0), rtol=1e-5)
    # With a stateless seed the flowed sample is the layer applied to the base sample.
    sample = flowed.sample(seed=[10, 0])
    assert sample.shape == (2, H, W, N)
    np.testing.assert_allclose(sample, paired(q.sample(seed=[10, 0]))[0], atol=1e-6)
    # The density at the distribution's own samples needs no inverse.
    log_prob = flowed.log_prob(sample).numpy()
    assert log_prob.shape == (2,) and np.all(np.isfinite(log_prob))


class TestFlowLayers(TestCase):
    def test_serialization(self):
        self.run_serialization_test(
            MaskedConv2D(8, 5, zero_diag=True, mirror=True, weight_init_coeff=0.1)
        )
        for layer in (IAFCell(mirror=True, name="c"), PairedIAFCell(name="p")):
            self.run_serialization_test(layer)
        assert IAFCell.from_config(IAFCell(mirror=True).get_config()).mirror


def test_save_and_load(tmp_path):
    inputs = keras.Input((H, W, N))
    model = keras.Model(inputs, PairedIAFCell()(inputs)[0])
    perturb(model)
    path = str(tmp_path / "flow.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    z = tf.random.normal((2, H, W, N), seed=11)
    np.testing.assert_allclose(loaded(z), model(z), atol=1e-6)


def test_variables_and_gradients():
    cell = IAFCell()
    cell.build((None, H, W, N))
    assert len(cell.trainable_variables) == 7
    paired = PairedIAFCell()
    z = tf.random.normal((2, H, W, N), seed=12)
    with tf.GradientTape() as tape:
        new_z, _ = paired(z)
        loss = tf.reduce_sum(tf.square(new_z))
    variables = paired.trainable_variables
    assert len(variables) == 14
    grads = tape.gradient(loss, variables)
    for variable, grad in zip(variables, grads):
        assert grad is not None, variable.path
        assert float(tf.norm(grad)) > 0.0, variable.path


def test_initialisation_of_shift_conv():
    cell = IAFCell()

    @tf.function
    def f(z):
        return cell(z)

    z = tf.random.normal((2, H, W, N), seed=13)
    f(z)  # first built inside a tf.function
    f(z + 1.0)  # retrace must not re-initialise
    for conv, coeff in ((cell.conv_a, 1.0), (cell.conv_b, 1.0), (cell.conv_mu, 0.1)):
        masked = conv.kernel.numpy() * conv.kernel_mask(conv.in_channels)
        norm = np.sqrt((masked**2).sum(axis=(0, 1, 2)))
        np.testing.assert_allclose(
            conv.log_weight_norm.numpy(),
            np.log(norm + 1e-2) + math.log(coeff),
            rtol=1e-5,
            atol=1e-6,
        )
    assert cell.conv_mu.use_bias and not cell.conv_a.use_bias
    assert not cell.conv_b.use_bias and cell.conv_b.groups == 6 * N


def test_jit_compile():
    paired = PairedIAFCell()
    paired.build((None, H, W, N))
    perturb(paired, seed=14)
    z = tf.random.normal((2, H, W, N), seed=15)
    bijector = IAFShiftBijector(paired.cell1)

    @tf.function(jit_compile=True)
    def forward(x):
        return paired(x)[0], bijector.forward(x)

    y, y1 = forward(z)
    np.testing.assert_allclose(y, paired(z)[0], atol=1e-5)
    np.testing.assert_allclose(y1, paired.cell1(z), atol=1e-5)


def test_parameter_count_matches_official():
    n = 4
    paired = PairedIAFCell()
    paired.build((None, 8, 8, n))
    hidden = 6 * n
    per_cell = (
        hidden * n * 9 + hidden  # conv_a kernel + log weight norm
        + hidden * 25 + hidden  # conv_b (depthwise)
        + n * hidden + n + n  # conv_mu kernel + log weight norm + bias
    )
    assert per_cell == 1616
    assert paired.cell1.count_params() == per_cell
    assert paired.count_params() == 2 * per_cell == 3232



def elu(x):
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def official_conv(x, weight, log_norm, bias, groups, mask):
    """NCHW reference of the official `ARConv2d` (stride 1, 'same' padding)."""
    weight = weight * mask
    norm = np.sqrt((weight**2).sum(axis=(1, 2, 3), keepdims=True))
    weight = np.exp(log_norm.reshape(-1, 1, 1, 1)) * weight / (norm + 1e-5)
    k = weight.shape[-1]
    p = (k - 1) // 2
    batch, _, height, width = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    out = np.zeros((batch, weight.shape[0], height, width))
    for i in range(k):
        for j in range(k):
            patch = padded[:, :, i : i + height, j : j + width]
            if groups == 1:
                out += np.einsum("bchw,oc->bohw", patch, weight[:, :, i, j])
            else:
                out += patch * weight[:, 0, i, j][None, :, None, None]
    if bias is not None:
        out += bias[None, :, None, None]
    return out


def official_cell(z, params, prefix, mirror):
    n = z.shape[1]
    hidden = 6 * n

    def conv(x, name, c_in, groups, c_out, zero_diag):
        key = f"{prefix}.{name}."
        weight = params[key + "weight"]
        mask = conv_mask(weight.shape[-1], c_in, groups, c_out, zero_diag, mirror)
        bias = params[key + "bias"] if key + "bias" in params else None
        return official_conv(
            x, weight, params[key + "log_weight_norm"], bias, groups, mask
        )

    s = elu(conv(z, "conv.convz.0", n, 1, hidden, True))
    s = elu(conv(s, "conv.convz.2", hidden, hidden, hidden, False))
    mu = conv(elu(s), "mu.conv_0", hidden, 1, n, False)
    return z - mu


def test_matches_official_forward_with_reference_weights():
    state_dict = Reference("cifar").state_dict
    params = {k: v.astype(np.float64) for k, v in state_dict.items() if "nf_cells.0." in k}
    prefix = "nf_cells.0."
    n = params[prefix + "cell1.mu.conv_0.bias"].shape[0]
    height, width = 5, 6
    paired = PairedIAFCell()
    paired.build((None, height, width, n))
    for cell_name in ("cell1", "cell2"):
        cell = getattr(paired, cell_name)
        for attr, official in OFFICIAL_NAMES.items():
            conv = getattr(cell, attr)
            key = f"{prefix}{cell_name}.{official}."
            conv.kernel.assign(np.transpose(params[key + "weight"], (2, 3, 1, 0)))
            conv.log_weight_norm.assign(params[key + "log_weight_norm"].reshape(-1))
            if conv.use_bias:
                conv.bias.assign(params[key + "bias"])
    z = np.random.default_rng(16).normal(size=(2, n, height, width))
    expected = official_cell(
        official_cell(z, params, prefix + "cell1", mirror=False),
        params,
        prefix + "cell2",
        mirror=True,
    )
    new_z, _ = paired(tf.constant(np.transpose(z, (0, 2, 3, 1)), tf.float32))
    np.testing.assert_allclose(
        np.transpose(new_z, (0, 3, 1, 2)), expected, rtol=1e-4, atol=1e-5
    )
