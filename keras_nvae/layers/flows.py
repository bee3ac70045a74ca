"""Inverse-autoregressive flow cells of NVAE.

Reproduces the official `neural_ar_operations.py` and the `CellAR` /
`PairedCellAR` cells of `model.py` (Vahdat & Kautz, 2020) in NHWC. A cell
computes a shift `mu(z)` with masked (autoregressive) convolutions and returns
`z - mu(z)`. Because `mu` at an element only depends on strictly earlier
elements, the map is volume preserving (log-determinant zero). The paired cell
applies one cell in raster order and one in reversed (mirrored) spatial order.

The autoregressive order over an `(H, W, C)` latent is raster order over pixels
and ascending order over channels, i.e. the flat index `(h * W + w) * C + c`.
The mirrored cell reverses the pixel order but keeps the channel order, i.e.
`((H - 1 - h) * W + (W - 1 - w)) * C + c`.

Besides the Keras layers, `IAFShiftBijector` exposes a cell as a
`tfp.bijectors.Bijector`, so that a flow-transformed posterior can be written
as `tfd.TransformedDistribution(q, IAFShiftBijector(cell))`.
"""

import math

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from keras_nvae.layers.conv import Conv2D

tfb = tfp.bijectors

# Channel expansion of the hidden layer of an IAF cell (official `ex=6`).
IAF_EXPANSION = 6
# The official cell scales the initial weights of its output convolution by
# 0.1 "to bring mu closer to 0 initially".
IAF_SHIFT_INIT_COEFF = 0.1


def channel_mask(c_in, g_in, c_out, zero_diag):
    """Autoregressive mask between input and output channels.

    Output channel groups are matched to input channels in ascending order: an
    output channel may only see input channels up to (or, with `zero_diag`,
    strictly before) its own group.

    Args:
        c_in: int, number of input channels.
        g_in: int, number of convolution groups; 1 (dense) or `c_in`
            (depthwise).
        c_out: int, number of output channels. One of `c_in`, `c_out` must
            divide the other.
        zero_diag: bool, whether an output group may not see its own input
            channel(s).

    Returns:
        float32 numpy array of shape `(c_out, c_in // g_in)` (PyTorch layout).
    """
    if c_in % c_out != 0 and c_out % c_in != 0:
        raise ValueError(
            f"One of c_in={c_in} and c_out={c_out} must divide the other."
        )
    if g_in not in (1, c_in):
        raise ValueError(f"`g_in` must be 1 or c_in={c_in}, got {g_in}.")
    if g_in == c_in:
        return np.full((c_out, 1), 0.0 if zero_diag else 1.0, dtype=np.float32)
    mask = np.ones((c_out, c_in), dtype=np.float32)
    if c_out >= c_in:
        ratio = c_out // c_in
        for i in range(c_in):
            mask[i * ratio : (i + 1) * ratio, i + 1 :] = 0
            if zero_diag:
                mask[i * ratio : (i + 1) * ratio, i : i + 1] = 0
    else:
        ratio = c_in // c_out
        for i in range(c_out):
            mask[i : i + 1, (i + 1) * ratio :] = 0
            if zero_diag:
                mask[i : i + 1, i * ratio : (i + 1) * ratio] = 0
    return mask


def conv_mask(kernel_size, c_in, g_in, c_out, zero_diag, mirror):
    """Autoregressive mask of a convolution kernel, in PyTorch layout.

    Taps in rows above the centre and taps left of the centre in the centre row
    are kept; the centre tap gets `channel_mask`; all other taps are zeroed.
    With `mirror` the spatial taps are flipped (the order over pixels is
    reversed) while the channel mask is unchanged.

    Args:
        kernel_size: int, odd square kernel size.
        c_in: int, number of input channels.
        g_in: int, number of convolution groups; 1 or `c_in`.
        c_out: int, number of output channels.
        zero_diag: bool, see `channel_mask`.
        mirror: bool, whether to reverse the spatial order.

    Returns:
        float32 numpy array of shape `(c_out, c_in // g_in, k, k)`.
    """
    if kernel_size % 2 != 1:
        raise ValueError(f"`kernel_size` must be odd, got {kernel_size}.")
    m = (kernel_size - 1) // 2
    mask = np.ones((c_out, c_in // g_in, kernel_size, kernel_size), np.float32)
    mask[:, :, m:, :] = 0
    mask[:, :, m, :m] = 1
    mask[:, :, m, m] = channel_mask(c_in, g_in, c_out, zero_diag)
    if mirror:
        mask = np.ascontiguousarray(mask[:, :, ::-1, ::-1])
    return mask


@keras.saving.register_keras_serializable(package="keras_nvae")
class MaskedConv2D(Conv2D):
    """Weight-normalised convolution with an autoregressive kernel mask.

    The official `ARConv2d`. The mask (see `conv_mask`) is applied to the
    kernel before weight normalisation and before the initialisation of the
    log weight norm.

    Args:
        filters: int, number of output channels.
        kernel_size: int, odd square kernel size.
        zero_diag: bool, whether an output channel group may not see its own
            input channel(s) at the centre tap.
        mirror: bool, whether to reverse the spatial autoregressive order.
        weight_init_coeff: float, the initial log weight norm is offset by
            `log(weight_init_coeff)`, scaling the initial kernel (official
            `ELUConv(weight_init_coeff=...)`).
        **kwargs: `keras_nvae.layers.conv.Conv2D` arguments (`padding`,
            `groups`, `use_bias`, ...). Strides must be 1.

    Example:
    ```python
    conv = MaskedConv2D(24, 3, zero_diag=True)
    y = conv(tf.zeros((2, 8, 8, 4)))  # (2, 8, 8, 24)
    ```
    """

    def __init__(
        self,
        filters,
        kernel_size,
        zero_diag=False,
        mirror=False,
        weight_init_coeff=1.0,
        **kwargs,
    ):
        super().__init__(filters, kernel_size, **kwargs)
        if self.strides != 1:
            raise ValueError("`MaskedConv2D` only supports `strides=1`.")
        if self.kernel_size % 2 != 1:
            raise ValueError(f"`kernel_size` must be odd, got {kernel_size}.")
        if weight_init_coeff <= 0:
            raise ValueError(
                f"`weight_init_coeff` must be positive, got {weight_init_coeff}."
            )
        self.zero_diag = bool(zero_diag)
        self.mirror = bool(mirror)
        self.weight_init_coeff = float(weight_init_coeff)

    def kernel_mask(self, input_channels):
        """The autoregressive mask in Keras layout `(kh, kw, C_in / groups, C_out)`.

        Args:
            input_channels: int, number of input channels.

        Returns:
            float32 numpy array.
        """
        mask = conv_mask(
            self.kernel_size,
            input_channels,
            self.groups,
            self.filters,
            self.zero_diag,
            self.mirror,
        )
        return np.transpose(mask, (2, 3, 1, 0))

    def add_weight(self, *args, name=None, initializer=None, **kwargs):
        # Offsets the initial log weight norm inside its initializer (rather
        # than assigning after `build`) so that it also holds when the layer
        # is first built inside a `tf.function`.
        if name == "log_weight_norm" and self.weight_init_coeff != 1.0:
            base_initializer = initializer
            offset = math.log(self.weight_init_coeff)

            def initializer(shape, dtype=None):
                return base_initializer(shape, dtype=dtype) + offset

        return super().add_weight(
            *args, name=name, initializer=initializer, **kwargs
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "zero_diag": self.zero_diag,
                "mirror": self.mirror,
                "weight_init_coeff": self.weight_init_coeff,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_nvae")
class IAFCell(keras.layers.Layer):
    """Shift-only inverse-autoregressive flow cell (official `CellAR`).

    For a latent `z` with `n` channels, the shift is

        s = ELU(conv_b(ELU(conv_a(z))))
        mu = conv_mu(ELU(s))

    with `conv_a` a masked 3x3 convolution to `6n` channels (`zero_diag=True`),
    `conv_b` a masked depthwise 5x5 convolution and `conv_mu` a masked 1x1
    convolution back to `n` channels with a bias and initial weights scaled
    by 0.1. The cell returns `z - mu`; its log-determinant is zero. The
    official parameter names map as `conv_a` <-> `conv.convz.0`,
    `conv_b` <-> `conv.convz.2` and `conv_mu` <-> `mu.conv_0`; the three
    sublayers are created in `build`, since their widths depend on `n`.

    Args:
        mirror: bool, whether to use the reversed spatial order.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        z: Tensor of shape `(batch, H, W, n)`.

    Returns:
        `z - mu(z)`, same shape as `z`.

    Example:
    ```python
    cell = IAFCell()
    new_z = cell(tf.random.normal((2, 8, 8, 4)))  # (2, 8, 8, 4)
    ```
    """

    def __init__(self, mirror=False, **kwargs):
        super().__init__(**kwargs)
        self.mirror = bool(mirror)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        hidden = IAF_EXPANSION * channels
        hidden_shape = tuple(input_shape[:-1]) + (hidden,)
        self.conv_a = MaskedConv2D(
            hidden,
            3,
            padding=1,
            zero_diag=True,
            mirror=self.mirror,
            dtype=self.dtype_policy,
            name="conv_a",
        )
        self.conv_b = MaskedConv2D(
            hidden,
            5,
            padding=2,
            groups=hidden,
            zero_diag=False,
            mirror=self.mirror,
            dtype=self.dtype_policy,
            name="conv_b",
        )
        self.conv_mu = MaskedConv2D(
            channels,
            1,
            padding=0,
            use_bias=True,
            zero_diag=False,
            mirror=self.mirror,
            weight_init_coeff=IAF_SHIFT_INIT_COEFF,
            dtype=self.dtype_policy,
            name="conv_mu",
        )
        self.conv_a.build(input_shape)
        self.conv_b.build(hidden_shape)
        self.conv_mu.build(hidden_shape)

    def shift(self, z):
        """The autoregressive shift `mu(z)`.

        Builds the cell on first use if needed.

        Args:
            z: Tensor of shape `(batch, H, W, n)`.

        Returns:
            Tensor of the same shape and dtype as `z`.
        """
        if not self.built:
            self.build(tuple(z.shape))
        s = tf.nn.elu(self.conv_b(tf.nn.elu(self.conv_a(z))))
        mu = self.conv_mu(tf.nn.elu(s))
        return tf.cast(mu, z.dtype)

    def call(self, z):
        return z - self.shift(z)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"mirror": self.mirror})
        return config


@keras.saving.register_keras_serializable(package="keras_nvae")
class PairedIAFCell(keras.layers.Layer):
    """Two IAF cells with opposite spatial orders (official `PairedCellAR`).

    Applies `cell1` (raster order) and then `cell2` (mirrored order).
    Calling the layer casts `z` to its compute dtype, as every Keras layer
    does; `transform(z)` applies the same flow in the dtype of `z`, which keeps
    float32 latents in float32 under mixed precision.

    Args:
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        z: Tensor of shape `(batch, H, W, n)`.

    Returns:
        Tuple `(new_z, log_det)`, both shaped like `z`. `log_det` is the
        per-element log-determinant, identically zero (kept for parity with
        the official cell).

    Example:
    ```python
    flow = PairedIAFCell()
    z, log_det = flow(tf.random.normal((2, 8, 8, 4)))  # log_det is all zeros
    z = flow.transform(tf.random.normal((2, 8, 8, 4)))
    ```
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.cell1 = IAFCell(mirror=False, dtype=self.dtype_policy, name="cell1")
        self.cell2 = IAFCell(mirror=True, dtype=self.dtype_policy, name="cell2")

    def build(self, input_shape):
        self.cell1.build(input_shape)
        self.cell2.build(input_shape)

    def transform(self, z):
        """The flow `z -> z - mu_1(z) -> ... - mu_2(...)` in the dtype of `z`.

        Builds the cells on first use if needed.

        Args:
            z: Tensor of shape `(batch, H, W, n)`.

        Returns:
            The flowed latent, same shape and dtype as `z`.
        """
        z = z - self.cell1.shift(z)
        return z - self.cell2.shift(z)

    def call(self, z):
        new_z = self.transform(z)
        return new_z, tf.zeros_like(new_z)

    def compute_output_shape(self, input_shape):
        return input_shape, input_shape


class IAFShiftBijector(tfb.Bijector):
    """Bijector view of an `IAFCell`: `forward(z) = z - cell.shift(z)`.

    The bijector holds a reference to the cell (whose variables stay owned by
    the Keras layer) and is cheap to create on the fly. Events are the last
    three dimensions `(H, W, C)`.

    The log-determinant of the Jacobian is zero everywhere (the Jacobian of the
    shift is strictly triangular), so `is_constant_jacobian=True`. The Jacobian
    matrix itself is not constant: `TransformedDistribution.mean()` would
    return `forward(q.mean())`, which is the mode, not the mean, of the flowed
    distribution.

    Only the forward map is implemented: TFP caches it, so sampling a
    `tfd.TransformedDistribution` and evaluating `log_prob` at its samples
    work, while `inverse` of any other point raises `NotImplementedError`
    (inverting the cell takes up to `H * W * C` sequential evaluations).

    Args:
        cell: a `IAFCell`.
        validate_args: bool, passed to `tfp.bijectors.Bijector`.
        name: str, bijector name.

    Example:
    ```python
    cell = IAFCell()
    z = tf.random.normal((2, 8, 8, 4))
    bij = IAFShiftBijector(cell)
    y = bij.forward(z)  # == cell(z)
    ```
    """

    def __init__(self, cell, validate_args=False, name="iaf_shift"):
        parameters = dict(locals())
        with tf.name_scope(name) as name:
            self._cell = cell
            super().__init__(
                forward_min_event_ndims=3,
                is_constant_jacobian=True,
                validate_args=validate_args,
                parameters=parameters,
                name=name,
            )

    @property
    def cell(self):
        """The wrapped `IAFCell`."""
        return self._cell

    def _forward(self, x):
        return x - self._cell.shift(x)

    def _forward_log_det_jacobian(self, x):
        return tf.zeros([], dtype=x.dtype)

    def _inverse_log_det_jacobian(self, y):
        return tf.zeros([], dtype=y.dtype)
