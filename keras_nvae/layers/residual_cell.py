"""NVAE's residual cell: `skip(x) + 0.1 * SE(ops(x))`."""

import keras

from keras_nvae.layers.cell_ops import make_cell_op, resampled_shape, resampling_of
from keras_nvae.layers.remat import rematerialize
from keras_nvae.layers.skips import FactorizedReduce, UpsampleSkip
from keras_nvae.layers.squeeze_excitation import SqueezeExcitation


@keras.saving.register_keras_serializable(package="keras_nvae")
class ResidualCell(keras.layers.Layer):
    """A residual cell of NVAE.

    The branch runs the ops of the recipe in sequence (only the first op
    changes the resolution), optionally followed by squeeze-and-excitation;
    the output is `skip + 0.1 * branch`. The skip is the identity, `FactorizedReduce` for
    down cells or `UpsampleSkip` for up cells. Down cells double the channels
    and up cells halve them.

    Args:
        filters: output channels.
        cell_type: e.g. "normal_enc", "down_pre", "up_dec", "normal_post".
        ops: tuple of op names (see `keras_nvae.config.ARCHITECTURES`).
        use_se: bool.
        remat: bool. In training, recompute the cell's activations in the
            backward pass instead of keeping them (`layers.remat`).
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    ```python
    cell = keras_nvae.layers.ResidualCell(16, "normal_enc", ("bnswish", "bnswish"))
    y = cell(tf.zeros((2, 8, 8, 16)))
    ```
    """

    def __init__(self, filters, cell_type, ops, use_se=True, remat=False, **kwargs):
        super().__init__(**kwargs)
        self.remat = remat
        self.filters = int(filters)
        self.cell_type = cell_type
        self.op_names = tuple(ops)
        self.use_se = use_se
        self.stride, self.upsample = resampling_of(cell_type)
        if self.stride == 2:
            self.skip = FactorizedReduce(filters, name="skip")
        elif self.upsample:
            self.skip = UpsampleSkip(filters, name="skip")
        else:
            self.skip = None
        self.ops = [
            make_cell_op(name, filters, self.stride, self.upsample)
            if i == 0
            else make_cell_op(name, filters)
            for i, name in enumerate(self.op_names)
        ]
        self.se = SqueezeExcitation(name="se") if use_se else None

    def build(self, input_shape):
        shape = tuple(input_shape)
        if self.skip is not None:
            self.skip.build(shape)
        for op in self.ops:
            op.build(shape)
            shape = tuple(op.compute_output_shape(shape))
        if self.se is not None:
            self.se.build(shape)

    def compute_output_shape(self, input_shape):
        return resampled_shape(input_shape, self.filters, self.stride, self.upsample)

    def call(self, inputs, training=None):
        if self.remat and training:
            return rematerialize(lambda x: self._residual(x, training), inputs)
        return self._residual(inputs, training)

    def _residual(self, inputs, training):
        skip = inputs if self.skip is None else self.skip(inputs)
        x = inputs
        for op in self.ops:
            x = op(x, training=training)
        if self.se is not None:
            x = self.se(x)
        return skip + 0.1 * x

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "cell_type": self.cell_type,
                "ops": list(self.op_names),
                "use_se": self.use_se,
                "remat": self.remat,
            }
        )
        return config
