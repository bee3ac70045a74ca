"""Layers against numpy re-implementations of the official PyTorch operations."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from harness import TestCase
from keras_nvae import layers
from keras_nvae.layers.cell_ops import upsample_bilinear_align_corners

RNG = np.random.RandomState(0)


def torch_conv2d(x, weight, bias=None, stride=1, padding=0, groups=1):
    """PyTorch conv2d (cross-correlation, symmetric padding) in numpy, NHWC input.

    weight: PyTorch layout (C_out, C_in / groups, kh, kw).
    """
    n, h, w, c = x.shape
    c_out, c_in_g, kh, kw = weight.shape
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    oh = (h + 2 * padding - kh) // stride + 1
    ow = (w + 2 * padding - kw) // stride + 1
    out = np.zeros((n, oh, ow, c_out))
    out_per_group = c_out // groups
    for o in range(c_out):
        g = o // out_per_group
        for i in range(oh):
            for j in range(ow):
                patch = xp[:, i * stride : i * stride + kh, j * stride : j * stride + kw, g * c_in_g : (g + 1) * c_in_g]
                out[:, i, j, o] = np.einsum("nhwc,chw->n", patch, weight[o])
    if bias is not None:
        out += bias
    return out


def torch_weight(conv):
    """The layer's effective kernel in PyTorch layout."""
    return np.transpose(conv.normalized_kernel().numpy(), (3, 2, 0, 1))


def test_weight_norm_formula_and_initial_g():
    conv = layers.Conv2D(5, 3, use_bias=True)
    conv.build((None, 6, 6, 4))
    v = conv.kernel.numpy()
    norm = np.sqrt((v**2).sum(axis=(0, 1, 2)))
    np.testing.assert_allclose(conv.log_weight_norm.numpy(), np.log(norm + 1e-2), rtol=1e-6)
    g = RNG.randn(5).astype("float32")
    conv.log_weight_norm.assign(g)
    expected = np.exp(g) * v / (norm + 1e-5)
    np.testing.assert_allclose(conv.normalized_kernel().numpy(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("stride, kernel, padding", [(1, 3, 1), (2, 3, 1), (2, 1, 0), (1, 1, 0), (1, 5, 2)])
def test_conv_matches_pytorch_padding_and_stride(stride, kernel, padding):
    x = RNG.randn(2, 8, 8, 3).astype("float32")
    conv = layers.Conv2D(4, kernel, strides=stride, padding=padding, use_bias=True)
    y = conv(x).numpy()
    expected = torch_conv2d(x.astype("float64"), torch_weight(conv), conv.bias.numpy(), stride, padding)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_depthwise_conv_matches_pytorch_groups():
    x = RNG.randn(2, 6, 6, 4).astype("float32")
    conv = layers.Conv2D(4, 5, groups=4, weight_norm=False)
    y = conv(x).numpy()
    expected = torch_conv2d(x.astype("float64"), torch_weight(conv), None, 1, 2, groups=4)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
    # The official spectral matrix: the PyTorch-layout kernel reshaped to (C_out, -1).
    assert conv.spectral_matrix().shape == (4, 25)
    np.testing.assert_array_equal(conv.spectral_matrix().numpy(), torch_weight(conv).reshape(4, -1))


def test_depthwise_custom_gradient_matches_tensorflow():
    from keras_nvae.layers.conv import depthwise_conv_same

    x = tf.constant(RNG.randn(3, 6, 7, 5).astype("float32"))
    kernel = tf.constant(RNG.randn(5, 5, 5, 1).astype("float32"))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, kernel])
        ours = depthwise_conv_same(x, kernel)
        reference = tf.nn.depthwise_conv2d(x, kernel, (1, 1, 1, 1), "SAME")
        loss_ours = tf.reduce_sum(ours * tf.sin(ours))
        loss_reference = tf.reduce_sum(reference * tf.sin(reference))
    np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=1e-6, atol=1e-6)
    for a, b in zip(tape.gradient(loss_ours, [x, kernel]), tape.gradient(loss_reference, [x, kernel])):
        # float32 sums over up to 3*6*7 terms in a different order.
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4 * np.abs(b.numpy()).max())


def test_conv_rejects_unsupported_groups():
    with pytest.raises(ValueError, match="depthwise"):
        layers.Conv2D(8, 3, groups=2)(np.zeros((1, 4, 4, 4), "float32"))


def test_batchnorm_training_eval_and_unbiased_running_variance():
    x = RNG.randn(4, 3, 3, 2).astype("float32") * 3 + 1
    bn = layers.BatchNorm()
    y = bn(x, training=True).numpy()
    mean = x.mean(axis=(0, 1, 2))
    var = x.var(axis=(0, 1, 2))
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)
    n = 4 * 3 * 3
    # PyTorch momentum 0.05 and the unbiased variance in the running estimate.
    np.testing.assert_allclose(bn.moving_mean.numpy(), 0.05 * mean, rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), 0.95 + 0.05 * var * n / (n - 1), rtol=1e-5)
    y_eval = bn(x, training=False).numpy()
    expected = (x - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy() + 1e-5)
    np.testing.assert_allclose(y_eval, expected, rtol=1e-4, atol=1e-5)


def test_bilinear_upsampling_uses_align_corners():
    x = RNG.randn(1, 3, 4, 2).astype("float32")
    y = upsample_bilinear_align_corners(tf.constant(x)).numpy()

    def interp_axis(a, axis):
        n = a.shape[axis]
        coords = np.arange(2 * n) * (n - 1) / (2 * n - 1)
        lo = np.floor(coords).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        frac = coords - lo
        shape = [1] * a.ndim
        shape[axis] = -1
        return np.take(a, lo, axis) * (1 - frac.reshape(shape)) + np.take(a, hi, axis) * frac.reshape(shape)

    expected = interp_axis(interp_axis(x, 1), 2)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    # Corners are kept exactly (the defining property of align_corners=True).
    np.testing.assert_allclose(y[:, [0, -1]][:, :, [0, -1]], x[:, [0, -1]][:, :, [0, -1]], rtol=1e-6)


def test_squeeze_excitation_matches_numpy():
    x = RNG.randn(2, 4, 4, 32).astype("float32")
    se = layers.SqueezeExcitation()
    y = se(x).numpy()
    w1, b1 = se.squeeze.kernel.numpy(), se.squeeze.bias.numpy()
    w2, b2 = se.excite.kernel.numpy(), se.excite.bias.numpy()
    assert w1.shape == (32, 4)  # max(32 // 16, 4) hidden units
    h = np.maximum(x.mean(axis=(1, 2)) @ w1 + b1, 0)
    gate = 1 / (1 + np.exp(-(h @ w2 + b2)))
    np.testing.assert_allclose(y, x * gate[:, None, None, :], rtol=1e-5, atol=1e-6)


def test_factorized_reduce_is_four_shifted_strided_convs():
    x = RNG.randn(2, 6, 6, 8).astype("float32")
    skip = layers.FactorizedReduce(16)
    y = skip(x).numpy()
    assert y.shape == (2, 3, 3, 16)
    swish = x / (1 + np.exp(-x))
    shifted = [swish, swish[:, 1:, 1:], swish[:, :, 1:], swish[:, 1:, :]]
    parts = [
        torch_conv2d(s.astype("float64"), torch_weight(conv), conv.bias.numpy(), 2, 0)
        for conv, s in zip(skip.convs, shifted)
    ]
    np.testing.assert_allclose(y, np.concatenate(parts, -1), rtol=1e-4, atol=1e-5)
    assert [c.filters for c in skip.convs] == [4, 4, 4, 4]


@pytest.mark.parametrize(
    "cell_type, ops, in_shape, out_shape",
    [
        ("normal_enc", ("bnswish", "bnswish"), (2, 8, 8, 8), (2, 8, 8, 8)),
        ("down_enc", ("bnswish", "bnswish"), (2, 8, 8, 8), (2, 4, 4, 16)),
        ("normal_dec", ("mbconv_e6",), (2, 4, 4, 8), (2, 4, 4, 8)),
        ("up_dec", ("mbconv_e6",), (2, 4, 4, 16), (2, 8, 8, 8)),
    ],
)
def test_residual_cell_is_skip_plus_scaled_branch(cell_type, ops, in_shape, out_shape):
    filters = out_shape[-1]
    cell = layers.ResidualCell(filters, cell_type, ops)
    x = RNG.randn(*in_shape).astype("float32")
    y = cell(x, training=False).numpy()
    assert y.shape == out_shape
    skip = x if cell.skip is None else cell.skip(x).numpy()
    branch = x
    for op in cell.ops:
        branch = op(branch, training=False)
    branch = cell.se(branch).numpy()
    np.testing.assert_allclose(y, skip + 0.1 * branch, rtol=1e-5, atol=1e-6)
    TestCase().run_serialization_test(cell)


def _batchnorm_train(x):
    """A fresh BN (gamma 1, beta 0) in training mode: batch statistics, epsilon 1e-5."""
    return (x - x.mean(axis=(0, 1, 2))) / np.sqrt(x.var(axis=(0, 1, 2)) + 1e-5)


def test_inverted_residual_hidden_width_and_no_weight_norm():
    op = layers.InvertedResidual(8, expansion=6, upsample=True)
    x = RNG.randn(1, 4, 4, 16).astype("float32")
    y = op(x, training=True)
    assert y.shape == (1, 8, 8, 8)
    assert op.hidden == 96  # 6 x the op's input width, as in the official code
    assert not op.conv_expand.weight_norm and not op.conv_expand.use_bias
    # Nearest x2 up-sampling, BN, 1x1 expand, BN-Swish, 5x5 depthwise, BN-Swish, 1x1 project, BN.
    h = np.repeat(np.repeat(x.astype("float64"), 2, axis=1), 2, axis=2)
    h = torch_conv2d(_batchnorm_train(h), torch_weight(op.conv_expand))
    h = _batchnorm_train(h)
    h = torch_conv2d(h / (1 + np.exp(-h)), torch_weight(op.conv_depthwise), padding=2, groups=96)
    h = _batchnorm_train(h)
    expected = _batchnorm_train(torch_conv2d(h / (1 + np.exp(-h)), torch_weight(op.conv_project)))
    # Four batch normalisations of float32 values over 64 pixels each.
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-4, atol=1e-4)


def random_weights(layer):
    """Random values for every weight (positive ones for BN's running variance)."""
    return [
        RNG.uniform(0.5, 1.5, w.shape) if "moving_variance" in w.path else 0.3 * RNG.randn(*w.shape)
        for w in layer.weights
    ]


@pytest.mark.parametrize(
    "make_op",
    [
        lambda upsample: layers.BNSwishConv(8, upsample=upsample),
        lambda upsample: layers.InvertedResidual(8, expansion=3, upsample=upsample),
    ],
)
def test_upsampling_ops_equal_the_op_on_nearest_upsampled_input(make_op):
    # In inference mode BN-Swish acts per pixel, so up-sampling before or after
    # it is the same: the up-sampling op is the plain op on the repeated input.
    x = RNG.randn(2, 3, 4, 6).astype("float32")
    up = make_op(upsample=True)
    plain = make_op(upsample=False)
    up.build(x.shape)
    plain.build((2, 6, 8, 6))
    up.set_weights(random_weights(up))
    plain.set_weights(up.get_weights())
    y = up(x, training=False).numpy()
    assert y.shape == (2, 6, 8, 8)
    repeated = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)
    np.testing.assert_allclose(y, plain(repeated, training=False).numpy(), rtol=1e-5, atol=1e-5)


def test_resampling_arguments_are_checked():
    for op in (layers.BNSwishConv, layers.InvertedResidual):
        with pytest.raises(ValueError, match="upsample=True"):
            op(8, stride=-1)
        with pytest.raises(ValueError, match="stride 2"):
            op(8, stride=2, upsample=True)


@pytest.mark.parametrize(
    "legacy_keys, expected",
    [
        # Keys that `get_config` wrote in keras_nvae 0.1.0 and `.keras` files carry.
        ({"dilation_rate": 1}, layers.Conv2D(4, 3, name="layer")),
        ({"synchronized": True}, layers.BatchNorm(name="layer")),
        ({"stride": -1}, layers.BNSwishConv(8, upsample=True, name="layer")),
        ({"stride": -1}, layers.InvertedResidual(8, expansion=3, upsample=True, name="layer")),
    ],
)
def test_configs_of_keras_nvae_0_1_0_still_load(legacy_keys, expected):
    serialized = keras.saving.serialize_keras_object(expected)
    serialized["config"].pop("upsample", None)
    serialized["config"].update(legacy_keys)
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is type(expected)
    assert restored.get_config() == expected.get_config()


def test_unsupported_legacy_options_are_rejected():
    with pytest.raises(ValueError, match="dilation_rate=2"):
        layers.Conv2D.from_config({**layers.Conv2D(4, 3).get_config(), "dilation_rate": 2})
    with pytest.raises(ValueError, match="synchronized=False"):
        layers.BatchNorm.from_config({**layers.BatchNorm().get_config(), "synchronized": False})


def test_combiners():
    enc = layers.EncoderCombiner(8)
    a, b = RNG.randn(2, 4, 4, 8).astype("float32"), RNG.randn(2, 4, 4, 16).astype("float32")
    np.testing.assert_allclose(enc(a, b).numpy(), a + enc.conv(b).numpy(), rtol=1e-6)
    dec = layers.DecoderCombiner(16)
    z = RNG.randn(2, 4, 4, 4).astype("float32")
    expected = dec.conv(np.concatenate([b, z], -1)).numpy()
    np.testing.assert_allclose(dec(b, z).numpy(), expected, rtol=1e-6)


class TestLayers(TestCase):
    @pytest.mark.parametrize(
        "layer",
        [
            layers.Conv2D(4, 3, strides=2, use_bias=True, weight_norm=False),
            layers.BatchNorm(momentum=0.9),
            layers.BNSwishConv(8, stride=2),
            layers.BNSwishConv(8, upsample=True),
            layers.InvertedResidual(8, expansion=3),
            layers.InvertedResidual(8, upsample=True),
            layers.FactorizedReduce(8),
            layers.UpsampleSkip(8),
            layers.EncoderCombiner(8),
            layers.DecoderCombiner(8),
            layers.SqueezeExcitation(),
        ],
    )
    def test_serialization(self, layer):
        self.run_serialization_test(layer)

    def test_squeeze_excitation_basics(self):
        self.run_layer_test(
            layers.SqueezeExcitation,
            init_kwargs={},
            input_data=RNG.randn(2, 4, 4, 16).astype("float32"),
            expected_output_shape=(2, 4, 4, 16),
            expected_num_trainable_weights=4,
        )

    def test_factorized_reduce_basics(self):
        self.run_layer_test(
            layers.FactorizedReduce,
            init_kwargs={"filters": 8},
            input_data=RNG.randn(2, 8, 8, 4).astype("float32"),
            expected_output_shape=(2, 4, 4, 8),
        )


def test_batched_spectral_matrices_equal_per_layer_ones():
    from keras_nvae.layers.flows import MaskedConv2D
    from keras_nvae.layers.conv import spectral_matrices

    convs = [
        layers.Conv2D(6, 3, use_bias=True),
        layers.Conv2D(6, 3),  # same kernel shape as the first: batched together
        layers.Conv2D(6, 5, groups=6, weight_norm=False),
        layers.Conv2D(8, 1),
        MaskedConv2D(6, 3, zero_diag=True),
        MaskedConv2D(6, 3, mirror=True),
    ]
    for conv in convs:
        conv.build((1, 4, 4, 6))
        # Move the weight norms away from their initial values so `g` matters.
        if conv.weight_norm:
            conv.log_weight_norm.assign(RNG.randn(conv.filters).astype("float32"))
    variables = [v for conv in convs for v in conv.trainable_variables if "bias" not in v.path]
    def per_layer(conv):
        kernel = conv.normalized_kernel()
        return tf.reshape(tf.transpose(kernel, (3, 0, 1, 2)), (conv.filters, -1))

    def numpy_matrix(conv):
        v = conv.kernel.numpy() * (1.0 if conv._mask is None else conv._mask)
        if conv.weight_norm:
            norm = np.sqrt((v.astype("float64") ** 2).sum(axis=(0, 1, 2)))
            v = np.exp(conv.log_weight_norm.numpy()) * v / (norm + 1e-5)
        return v.transpose(3, 0, 1, 2).reshape(conv.filters, -1)

    with tf.GradientTape(persistent=True) as tape:
        batched = spectral_matrices(convs)
        single = [per_layer(conv) for conv in convs]
        weights = [tf.constant(RNG.randn(*m.shape).astype("float32")) for m in single]
        loss_batched = sum(tf.reduce_sum(w * m) for w, m in zip(weights, batched))
        loss_single = sum(tf.reduce_sum(w * m) for w, m in zip(weights, single))
    for a, b, conv in zip(batched, single, convs):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(a.numpy(), numpy_matrix(conv), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(conv.spectral_matrix().numpy(), a.numpy(), rtol=1e-6, atol=1e-7)
    for a, b in zip(tape.gradient(loss_batched, variables), tape.gradient(loss_single, variables)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_host_uniform_initialisers_moments_and_seeds():
    from keras_nvae.layers import FanInUniform, HostUniform

    # U(-a, a) has mean 0 and variance a**2 / 3; 288,000 draws give a standard error of
    # a / sqrt(3 * 288000) ~ 1.1e-3 a on the mean.
    shape = (3, 3, 100, 320)
    values = FanInUniform(seed=1)(shape)
    a = 1.0 / np.sqrt(900)
    assert values.dtype == np.float32 and values.shape == shape
    assert np.abs(values).max() <= a
    assert abs(values.mean()) < 5e-3 * a
    np.testing.assert_allclose(values.var(), a**2 / 3, rtol=1e-2)
    np.testing.assert_array_equal(values, FanInUniform(seed=1)(shape))
    uniform = HostUniform(2.0, 3.0)
    x, y = uniform((1000,)), uniform((1000,), dtype="float64")
    assert y.dtype == np.float64 and x.min() >= 2.0 and x.max() < 3.0
    assert not np.array_equal(x, y.astype(np.float32))
    assert HostUniform.from_config(uniform.get_config()).get_config() == uniform.get_config()
