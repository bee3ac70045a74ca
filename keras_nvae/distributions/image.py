"""What NVAE's image likelihoods share: a parameter tensor whose event is an image.

Images are modelled in `[-1, 1]` after the map `x -> 2x - 1`, as in the
official NVAE implementation.
"""

import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions


def _check_num_channels(num_channels):
    if num_channels not in (1, 2, 3):
        raise ValueError(
            f"`num_channels` must be 1, 2 or 3. Received: {num_channels}"
        )


def _check_last_axis(params, expected, what):
    size = params.shape[-1]
    if size is not None and size != expected:
        raise ValueError(
            f"{what} expects the last axis of `params` to have size "
            f"{expected}. Received params with shape {params.shape}"
        )


class _ImageLikelihood(tfd.Distribution):
    """What the image likelihoods share: a parameter tensor `(..., H, W, P)`
    whose event is an image `(H, W, C)`. Subclasses set `_params` and
    `_num_channels` before calling `tfd.Distribution.__init__`, and say in
    their docstring how `sample`'s `temperature` acts."""

    @classmethod
    def _parameter_properties(cls, dtype, num_classes=None):
        return dict(params=tfp.util.ParameterProperties(event_ndims=3))

    @property
    def params(self):
        """The raw parameter tensor."""
        return self._params

    @property
    def num_channels(self):
        """Number of image channels."""
        return self._num_channels

    def _event_shape(self):
        return self._params.shape[-3:-1].concatenate([self._num_channels])

    def _event_shape_tensor(self):
        return tf.concat([tf.shape(self._params)[-3:-1], [self._num_channels]], axis=0)

    def sample_with_temperature(self, temperature, seed=None):
        """Draws one image per batch member at the given temperature.

        Equivalent to `sample(seed=seed, temperature=temperature)`.

        Args:
            temperature: Positive float or scalar tensor (the class docstring
                says how it acts).
            seed: Optional stateless seed, an int tensor of shape `(2,)`.

        Returns:
            Tensor `(..., H, W, C)` in `[0, 1]`.
        """
        return self.sample(seed=seed, temperature=temperature)
