"""The operations inside NVAE's residual cells."""

import keras
import tensorflow as tf

from keras_nvae.layers.conv import Conv2D
from keras_nvae.layers.fused import bn_swish_consumer
from keras_nvae.layers.normalization import BatchNorm


def upsample_nearest(x):
    """Nearest-neighbour x2 up-sampling, NHWC."""
    x = tf.repeat(x, 2, axis=1)
    return tf.repeat(x, 2, axis=2)


def upsample_bilinear_align_corners(x):
    """Bilinear x2 up-sampling with `align_corners=True` (PyTorch semantics), NHWC."""
    size = tf.shape(x)[1:3] * 2
    y = tf.raw_ops.ResizeBilinear(
        images=x, size=size, align_corners=True, half_pixel_centers=False
    )
    return tf.cast(y, x.dtype)


def resampled_shape(input_shape, filters, stride, upsample):
    """Output shape of an op or cell that down-samples by `stride` or up-samples x2.

    Args:
        input_shape: NHWC shape; unknown dimensions may be None.
        filters: output channels.
        stride: 1, or 2 to halve the resolution.
        upsample: bool, double the resolution.

    Returns:
        The NHWC output shape, a tuple.
    """
    factor = 2 if upsample else 1 / stride
    spatial = tuple(None if d is None else int(d * factor) for d in input_shape[1:3])
    return (input_shape[0],) + spatial + (filters,)


def resampling_of(cell_type):
    """How a cell type changes the resolution.

    Args:
        cell_type: e.g. "normal_enc", "down_pre", "up_dec".

    Returns:
        `(stride, upsample)`: `(2, False)` for down cells, `(1, True)` for up
        cells and `(1, False)` otherwise.
    """
    return (2 if cell_type.startswith("down") else 1), cell_type.startswith("up")


def _effective_kernel(conv):
    return tf.cast(conv.normalized_kernel(), conv.compute_dtype)


def _check_resampling(stride, upsample):
    if stride not in (1, 2):
        raise ValueError(
            f"`stride` must be 1 or 2, got {stride!r}; to up-sample, pass upsample=True."
        )
    if upsample and stride != 1:
        raise ValueError("An op cannot both up-sample and have stride 2; use stride=1.")


def _upgrade_resampling_config(config):
    """Maps the `stride=-1` of keras_nvae 0.1.0 configs to `upsample=True`."""
    config = dict(config)
    if config.get("stride") == -1:
        config.update(stride=1, upsample=True)
    return config


@keras.saving.register_keras_serializable(package="keras_nvae")
class BNSwishConv(keras.layers.Layer):
    """BN - Swish - [nearest x2 if upsample] - weight-normalised Conv3x3 (with bias).

    NVAE's encoder op (`res_bnswish`). Only the BN input is kept for the
    backward pass (see `bn_swish_consumer`).

    Args:
        filters: output channels.
        stride: 1, or 2 to down-sample.
        upsample: bool, nearest-neighbour x2 up-sampling before the
            convolution.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    ```python
    op = keras_nvae.layers.BNSwishConv(32, stride=2)
    y = op(tf.zeros((2, 8, 8, 16)))  # (2, 4, 4, 32)
    ```
    """

    def __init__(self, filters, stride=1, upsample=False, **kwargs):
        super().__init__(**kwargs)
        _check_resampling(stride, upsample)
        self.filters = int(filters)
        self.stride = int(stride)
        self.upsample = bool(upsample)
        self.bn = BatchNorm(name="bn")
        self.conv = Conv2D(
            filters, 3, strides=self.stride, padding=1, use_bias=True, name="conv"
        )

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self.bn.build(input_shape)
        self.conv.build(input_shape)

    def call(self, inputs, training=None):
        def consumer(s, kernel):
            return self.conv.convolve(upsample_nearest(s) if self.upsample else s, kernel)

        y = bn_swish_consumer(
            self.bn, inputs, consumer, (_effective_kernel(self.conv),), training
        )
        return y + tf.cast(self.conv.bias, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return resampled_shape(input_shape, self.filters, self.stride, self.upsample)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"filters": self.filters, "stride": self.stride, "upsample": self.upsample}
        )
        return config

    @classmethod
    def from_config(cls, config):
        return super().from_config(_upgrade_resampling_config(config))


@keras.saving.register_keras_serializable(package="keras_nvae")
class InvertedResidual(keras.layers.Layer):
    """NVAE's inverted-residual (MBConv) op, without the residual connection.

    [nearest x2 if upsample] - BN - Conv1x1 (expand) - BN - Swish - depthwise
    ConvKxK - BN - Swish - Conv1x1 - BN. The convolutions have no bias and no weight
    normalisation, as in the official `InvertedResidual`. The hidden width is
    `round(C_in * expansion)` of the op's input width. Each BN - Swish - conv
    keeps only its BN input for the backward pass (see `bn_swish_consumer`).

    Args:
        filters: output channels.
        stride: 1, or 2 to down-sample (in the depthwise convolution).
        expansion: hidden-width multiplier (6 in the decoder, 3 in the
            post-process cells).
        kernel_size: depthwise kernel size.
        upsample: bool, nearest-neighbour x2 up-sampling first.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    ```python
    op = keras_nvae.layers.InvertedResidual(16, expansion=6)
    y = op(tf.zeros((2, 8, 8, 16)))
    ```
    """

    def __init__(
        self, filters, stride=1, expansion=6, kernel_size=5, upsample=False, **kwargs
    ):
        super().__init__(**kwargs)
        _check_resampling(stride, upsample)
        self.filters = int(filters)
        self.stride = int(stride)
        self.upsample = bool(upsample)
        self.expansion = expansion
        self.kernel_size = int(kernel_size)
        self.bn_in = BatchNorm(name="bn_in")
        self.bn_expand = BatchNorm(name="bn_expand")
        self.bn_depthwise = BatchNorm(name="bn_depthwise")
        self.bn_out = BatchNorm(name="bn_out")

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        hidden = int(round(input_shape[-1] * self.expansion))
        self.hidden = hidden
        self.conv_expand = Conv2D(hidden, 1, weight_norm=False, name="conv_expand")
        self.conv_depthwise = Conv2D(
            hidden,
            self.kernel_size,
            strides=self.stride,
            groups=hidden,
            weight_norm=False,
            name="conv_depthwise",
        )
        self.conv_project = Conv2D(self.filters, 1, weight_norm=False, name="conv_project")
        scale = 2 if self.upsample else 1
        spatial = tuple(None if d is None else d * scale for d in input_shape[1:3])
        x_shape = (input_shape[0],) + spatial + (input_shape[-1],)
        hidden_shape = x_shape[:-1] + (hidden,)
        self.bn_in.build(x_shape)
        self.conv_expand.build(x_shape)
        self.bn_expand.build(hidden_shape)
        self.conv_depthwise.build(hidden_shape)
        self.bn_depthwise.build(hidden_shape)
        self.conv_project.build(hidden_shape)
        self.bn_out.build(hidden_shape[:-1] + (self.filters,))

    def call(self, inputs, training=None):
        x = inputs
        if self.upsample:
            x = upsample_nearest(x)
        x = self.conv_expand(self.bn_in(x, training=training))
        for bn, conv in (
            (self.bn_expand, self.conv_depthwise),
            (self.bn_depthwise, self.conv_project),
        ):
            x = bn_swish_consumer(bn, x, conv.convolve, (_effective_kernel(conv),), training)
        return self.bn_out(x, training=training)

    def compute_output_shape(self, input_shape):
        return resampled_shape(input_shape, self.filters, self.stride, self.upsample)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "stride": self.stride,
                "expansion": self.expansion,
                "kernel_size": self.kernel_size,
                "upsample": self.upsample,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        return super().from_config(_upgrade_resampling_config(config))


def make_cell_op(name, filters, stride=1, upsample=False):
    """Build one op of a residual cell from its recipe name (see config.ARCHITECTURES).

    Args:
        name: "bnswish" or "mbconv_eX" (X the expansion).
        filters: output channels.
        stride: 1, or 2 to down-sample.
        upsample: bool, up-sample x2 first.

    Returns:
        A `BNSwishConv` or `InvertedResidual`.
    """
    if name == "bnswish":
        return BNSwishConv(filters, stride, upsample=upsample)
    if name.startswith("mbconv_e"):
        expansion = int(name[len("mbconv_e"):])
        return InvertedResidual(filters, stride, expansion=expansion, upsample=upsample)
    raise ValueError(f"Unknown cell op {name!r}.")
