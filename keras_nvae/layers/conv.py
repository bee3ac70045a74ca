"""Weight-normalised 2-D convolution with PyTorch-style symmetric padding."""

import keras
import numpy as np
import tensorflow as tf

from keras_nvae.layers.initializers import FanInUniform, HostUniform


@tf.custom_gradient
def depthwise_conv_same(x, kernel):
    """Stride-1 'SAME' depthwise convolution with a faster gradient on CPUs.

    TensorFlow's depthwise back-propagation kernels are several times slower
    than its forward kernel on CPUs, so both gradients are written as forward
    depthwise convolutions: the input gradient correlates `dy` with the
    spatially flipped kernel; the filter gradient correlates the padded input
    with `dy`, folding the batch into the channels.

    Args:
        x: (N, H, W, C) tensor.
        kernel: (k, k, C, 1) tensor, k odd.

    Returns:
        (N, H, W, C) tensor.
    """
    strides = (1, 1, 1, 1)
    y = tf.nn.depthwise_conv2d(x, kernel, strides, "SAME")

    def grad(dy):
        k = kernel.shape[0]
        p = (k - 1) // 2
        dx = tf.nn.depthwise_conv2d(dy, tf.reverse(kernel, [0, 1]), strides, "SAME")
        n, h, w, c = tf.unstack(tf.shape(x))
        x_pad = tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])
        # (1, H + 2p, W + 2p, N * C) input and (H, W, N * C, 1) "filter".
        x_fold = tf.reshape(tf.transpose(x_pad, (1, 2, 0, 3)), (1, h + 2 * p, w + 2 * p, n * c))
        dy_fold = tf.reshape(tf.transpose(dy, (1, 2, 0, 3)), (h, w, n * c, 1))
        dk = tf.nn.depthwise_conv2d(x_fold, dy_fold, strides, "VALID")
        dk = tf.reduce_sum(tf.reshape(dk, (k, k, n, c)), axis=2)
        return dx, tf.reshape(dk, tf.shape(kernel))

    return y, grad


def weight_normalize(kernel, log_weight_norm):
    """NVAE's weight normalisation `exp(g) * v / (||v|| + 1e-5)`.

    The norm is taken over (kh, kw, C_in) for each output channel. Leading
    batch axes are allowed: `kernel` (..., kh, kw, C_in, C_out) with
    `log_weight_norm` (..., C_out).

    Args:
        kernel: the raw kernel(s) `v`.
        log_weight_norm: `g`, the log of each output channel's norm.

    Returns:
        Tensor shaped like `kernel`.
    """
    norm = tf.sqrt(tf.reduce_sum(tf.square(kernel), axis=(-4, -3, -2), keepdims=True))
    # One per-channel factor, then one kernel-sized product: two fewer passes
    # over the kernels forward and backward than scaling and dividing them.
    factor = tf.exp(log_weight_norm)[..., None, None, None, :] / (norm + 1e-5)
    return kernel * factor


def spectral_matrices(convs):
    """`conv.spectral_matrix()` of every layer in `convs`, computed in batches.

    Layers whose kernels have the same shape (and the same weight-norm
    setting) are stacked, so the weight normalisation and reshaping run once
    per shape instead of once per layer: a deep NVAE has hundreds of
    convolutions, and every op in its training graph costs memory and
    compile time on a CPU.

    Args:
        convs: list of built `Conv2D` layers.

    Returns:
        List of (C_out, kh * kw * C_in / groups) tensors, in the order of `convs`.
    """
    groups = {}
    for index, conv in enumerate(convs):
        groups.setdefault((tuple(conv.kernel.shape), conv.weight_norm), []).append(index)
    matrices = [None] * len(convs)
    for (shape, weight_norm), indices in groups.items():
        kernels = tf.stack([convs[i].masked_kernel() for i in indices])
        if weight_norm:
            log_norms = tf.stack(
                [tf.convert_to_tensor(convs[i].log_weight_norm) for i in indices]
            )
            kernels = weight_normalize(kernels, log_norms)
        stacked = tf.reshape(
            tf.transpose(kernels, (0, 4, 1, 2, 3)), (len(indices), shape[-1], -1)
        )
        for i, matrix in zip(indices, tf.unstack(stacked)):
            matrices[i] = matrix
    return matrices


def _array_initializer(value):
    """An initializer that returns the NumPy array `value`, cast to `dtype`."""

    def initializer(shape, dtype=None):
        return np.asarray(value, dtype=keras.backend.standardize_dtype(dtype or "float32"))

    return initializer


class RootScopedWeights:
    """Layer mixin: `add_weight` outside the TensorFlow name scopes of its parents.

    TensorFlow names a variable's handle op after the enclosing name scopes,
    and an eager op whose attributes (the name among them) are new gets a
    kernel of its own: about 1 ms a variable, 5 s for a 256-pixel NVAE.
    Under the root scope every `kernel` (`bias`, ...) shares one cached
    kernel. Keras paths (`variable.path`) keep the layer's full path.
    """

    def add_weight(self, *args, **kwargs):
        with tf.name_scope(""):
            return super().add_weight(*args, **kwargs)


@keras.saving.register_keras_serializable(package="keras_nvae")
class Conv2D(RootScopedWeights, keras.layers.Layer):
    """2-D convolution with NVAE's weight normalisation.

    The effective kernel is `exp(g) * v / (||v|| + 1e-5)` where the norm is taken
    over (kh, kw, C_in) for each output channel and `g` (`log_weight_norm`) is
    initialised to `log(||v_init|| + 1e-2)`, as in the official NVAE. Padding is
    symmetric (PyTorch convention), which matters for strided convolutions.

    Only dense (`groups=1`) and depthwise (`groups == C_in == filters`)
    convolutions are supported.

    Args:
        filters: int, number of output channels.
        kernel_size: int, square kernel size.
        strides: int, 1 or 2.
        padding: int or None. Symmetric zero padding; None means
            `(kernel_size - 1) // 2`.
        groups: int, 1 or the number of input channels (depthwise).
        use_bias: bool.
        weight_norm: bool. If False the raw kernel is used (NVAE's MBConv
            convolutions).
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    ```python
    conv = keras_nvae.layers.Conv2D(16, 3, use_bias=True)
    y = conv(tf.zeros((2, 8, 8, 4)))  # (2, 8, 8, 16)
    ```
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=1,
        padding=None,
        groups=1,
        use_bias=False,
        weight_norm=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if strides not in (1, 2):
            raise ValueError(f"`strides` must be 1 or 2, got {strides}.")
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.padding = (self.kernel_size - 1) // 2 if padding is None else int(padding)
        self.groups = int(groups)
        self.use_bias = use_bias
        self.weight_norm = weight_norm

    def kernel_mask(self, input_channels):
        """Multiplicative kernel mask (Keras layout) or None; see `MaskedConv2D`."""
        return None

    def build(self, input_shape):
        if self.built:
            return
        in_channels = int(input_shape[-1])
        if self.groups not in (1, in_channels) or (
            self.groups > 1 and self.groups != self.filters
        ):
            raise ValueError(
                "Only dense (groups=1) and depthwise (groups == input channels == "
                f"filters) convolutions are supported; got groups={self.groups}, "
                f"input channels={in_channels}, filters={self.filters}."
            )
        self.in_channels = in_channels
        k = self.kernel_size
        kernel_shape = (k, k, in_channels // self.groups, self.filters)
        # Drawn on the host, so that `g` below comes from it without reading
        # the variable back.
        kernel = FanInUniform()(kernel_shape)
        self.kernel = self.add_weight(
            name="kernel", shape=kernel_shape, initializer=_array_initializer(kernel)
        )
        mask = self.kernel_mask(in_channels)
        self._mask = None if mask is None else np.asarray(mask, dtype="float32")
        if self.use_bias:
            bound = 1.0 / np.sqrt(k * k * in_channels // self.groups)
            self.bias = self.add_weight(
                name="bias",
                shape=(self.filters,),
                initializer=HostUniform(-bound, bound),
            )
        if self.weight_norm:
            if self._mask is not None:
                kernel = kernel * self._mask
            norm = np.sqrt(np.sum(np.square(kernel), axis=(0, 1, 2)))
            self.log_weight_norm = self.add_weight(
                name="log_weight_norm",
                shape=(self.filters,),
                initializer=_array_initializer(np.log(norm + 1e-2)),
            )

    def masked_kernel(self):
        """The raw kernel `v` times the autoregressive mask, if any."""
        kernel = tf.convert_to_tensor(self.kernel)
        if self._mask is not None:
            kernel = kernel * tf.constant(self._mask, dtype=kernel.dtype)
        return kernel

    def normalized_kernel(self):
        """The effective kernel, (kh, kw, C_in / groups, C_out)."""
        kernel = self.masked_kernel()
        if self.weight_norm:
            kernel = weight_normalize(kernel, tf.convert_to_tensor(self.log_weight_norm))
        return kernel

    def spectral_matrix(self):
        """The effective kernel as a (C_out, -1) matrix for spectral regularisation."""
        return spectral_matrices([self])[0]

    @property
    def spectral_matrix_shape(self):
        """The shape of `spectral_matrix()`, (C_out, kh * kw * C_in / groups)."""
        return (self.filters, int(np.prod(self.kernel.shape[:-1])))

    def call(self, inputs):
        y = self.convolve(inputs, tf.cast(self.normalized_kernel(), self.compute_dtype))
        if self.use_bias:
            y = y + tf.cast(self.bias, self.compute_dtype)
        return y

    def convolve(self, inputs, kernel):
        """The convolution of `inputs` with a given effective `kernel`, no bias.

        Args:
            inputs: (N, H, W, C_in) tensor.
            kernel: (kh, kw, C_in / groups, C_out) tensor in the compute dtype,
                e.g. `normalized_kernel()` cast.

        Returns:
            (N, H', W', C_out) tensor.
        """
        x = inputs
        if self.strides == 1 and self.padding * 2 == self.kernel_size - 1:
            padding = "SAME"
        else:
            padding = "VALID"
            if self.padding:
                p = self.padding
                x = tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])
        strides = (1, self.strides, self.strides, 1)
        if self.groups == 1 and self.kernel_size == 1 and self.strides == 1:
            # A 1x1 convolution is a matrix product; its gradients are too, and
            # GEMMs are much faster than conv back-propagation on CPUs.
            flat = tf.reshape(x, (-1, self.in_channels))
            y = tf.matmul(flat, tf.reshape(kernel, (self.in_channels, self.filters)))
            return tf.reshape(y, tf.concat([tf.shape(x)[:-1], [self.filters]], axis=0))
        if self.groups == 1:
            return tf.nn.conv2d(x, kernel, strides, padding)
        kernel = tf.reshape(kernel, (self.kernel_size, self.kernel_size, self.filters, 1))
        if padding == "SAME":
            return depthwise_conv_same(x, kernel)
        return tf.nn.depthwise_conv2d(x, kernel, strides, padding)

    def compute_output_shape(self, input_shape):
        def out(n):
            if n is None:
                return None
            return (n + 2 * self.padding - self.kernel_size) // self.strides + 1

        return (input_shape[0], out(input_shape[1]), out(input_shape[2]), self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "padding": self.padding,
                "groups": self.groups,
                "use_bias": self.use_bias,
                "weight_norm": self.weight_norm,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        # `.keras` files from keras_nvae 0.1.0 record `dilation_rate` (always 1).
        dilation_rate = config.pop("dilation_rate", 1)
        if dilation_rate != 1:
            raise ValueError(
                f"{cls.__name__} does not support dilated convolutions; the config "
                f"has dilation_rate={dilation_rate}; remove the key or set it to 1."
            )
        return super().from_config(config)
