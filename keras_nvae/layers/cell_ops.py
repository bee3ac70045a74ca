"""The operations inside NVAE's residual cells."""

import keras
import tensorflow as tf

from keras_nvae.layers.conv import Conv2D
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


def _output_shape(input_shape, filters, stride):
    factor = {1: 1, 2: 0.5, -1: 2}[stride]
    spatial = tuple(None if d is None else int(d * factor) for d in input_shape[1:3])
    return (input_shape[0],) + spatial + (filters,)


def stride_of(cell_type):
    """1 for normal/combiner cells, 2 for down cells, -1 for up cells."""
    if cell_type.startswith("down"):
        return 2
    if cell_type.startswith("up"):
        return -1
    return 1


@keras.saving.register_keras_serializable(package="keras_nvae")
class BNSwishConv(keras.layers.Layer):
    """BN - Swish - [nearest x2 if up] - weight-normalised Conv3x3 (with bias).

    NVAE's encoder op (`res_bnswish`).

    Args:
        filters: output channels.
        stride: 1, 2 (down-sampling) or -1 (up-sampling).
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    ```python
    op = keras_nvae.layers.BNSwishConv(32, stride=2)
    y = op(tf.zeros((2, 8, 8, 16)))  # (2, 4, 4, 32)
    ```
    """

    def __init__(self, filters, stride=1, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.stride = int(stride)
        self.bn = BatchNorm(name="bn")
        self.conv = Conv2D(
            filters, 3, strides=max(self.stride, 1), padding=1, use_bias=True, name="conv"
        )

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self.bn.build(input_shape)
        self.conv.build(input_shape)

    def call(self, inputs, training=None):
        x = tf.nn.silu(self.bn(inputs, training=training))
        if self.stride == -1:
            x = upsample_nearest(x)
        return self.conv(x)

    def compute_output_shape(self, input_shape):
        return _output_shape(input_shape, self.filters, self.stride)

    def get_config(self):
        config = super().get_config()
        config.update({"filters": self.filters, "stride": self.stride})
        return config


@keras.saving.register_keras_serializable(package="keras_nvae")
class InvertedResidual(keras.layers.Layer):
    """NVAE's inverted-residual (MBConv) op, without the residual connection.

    [nearest x2 if up] - BN - Conv1x1 (expand) - BN - Swish - depthwise ConvKxK
    - BN - Swish - Conv1x1 - BN. The convolutions have no bias and no weight
    normalisation, as in the official `InvertedResidual`. The hidden width is
    `round(C_in * expansion)` of the op's input width.

    Args:
        filters: output channels.
        stride: 1, 2 or -1 (up-sampling).
        expansion: hidden-width multiplier (6 in the decoder, 3 in the
            post-process cells).
        kernel_size: depthwise kernel size.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    ```python
    op = keras_nvae.layers.InvertedResidual(16, expansion=6)
    y = op(tf.zeros((2, 8, 8, 16)))
    ```
    """

    def __init__(self, filters, stride=1, expansion=6, kernel_size=5, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.stride = int(stride)
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
            strides=max(self.stride, 1),
            groups=hidden,
            weight_norm=False,
            name="conv_depthwise",
        )
        self.conv_project = Conv2D(self.filters, 1, weight_norm=False, name="conv_project")
        scale = 2 if self.stride == -1 else 1
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
        if self.stride == -1:
            x = upsample_nearest(x)
        x = self.bn_in(x, training=training)
        x = tf.nn.silu(self.bn_expand(self.conv_expand(x), training=training))
        x = tf.nn.silu(self.bn_depthwise(self.conv_depthwise(x), training=training))
        return self.bn_out(self.conv_project(x), training=training)

    def compute_output_shape(self, input_shape):
        return _output_shape(input_shape, self.filters, self.stride)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "stride": self.stride,
                "expansion": self.expansion,
                "kernel_size": self.kernel_size,
            }
        )
        return config


def make_cell_op(name, filters, stride):
    """Build one op of a residual cell from its recipe name (see config.ARCHITECTURES)."""
    if name == "bnswish":
        return BNSwishConv(filters, stride)
    if name.startswith("mbconv_e"):
        return InvertedResidual(filters, stride, expansion=int(name[len("mbconv_e"):]))
    raise ValueError(f"Unknown cell op {name!r}.")
