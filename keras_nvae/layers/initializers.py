"""Uniform initialisers drawn on the host with NumPy.

A 256-pixel NVAE has about 2,000 randomly initialised variables. Keras'
random initialisers run several eager TensorFlow ops each (seed handling,
the draw, scaling), 2-12 ms a variable on a busy 2-core machine; a NumPy
draw costs no op at all. The seeds come from Python's `random` module, which
`keras.utils.set_random_seed` seeds, so seeded builds stay reproducible.
"""

import random

import keras
import numpy as np


@keras.saving.register_keras_serializable(package="keras_nvae")
class HostUniform(keras.initializers.Initializer):
    """U(minval, maxval), drawn with NumPy.

    Args:
        minval: lower bound.
        maxval: upper bound.
        seed: None (each call draws a seed from Python's `random`) or an int
            (every call returns the same values).

    Example:
    ```python
    initializer = keras_nvae.layers.HostUniform(-0.1, 0.1)
    values = initializer((3, 4))  # float32 NumPy array
    ```
    """

    def __init__(self, minval=-0.05, maxval=0.05, seed=None):
        self.minval = float(minval)
        self.maxval = float(maxval)
        self.seed = seed

    def bounds(self, shape):
        """The (low, high) bounds for a variable of `shape`."""
        return self.minval, self.maxval

    def __call__(self, shape, dtype=None):
        seed = random.getrandbits(64) if self.seed is None else self.seed
        low, high = self.bounds(tuple(shape))
        values = np.random.default_rng(seed).random(shape, dtype=np.float32)
        values *= np.float32(high - low)
        values += np.float32(low)
        return values.astype(keras.backend.standardize_dtype(dtype or "float32"), copy=False)

    def get_config(self):
        return {"minval": self.minval, "maxval": self.maxval, "seed": self.seed}


@keras.saving.register_keras_serializable(package="keras_nvae")
class FanInUniform(HostUniform):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default conv/linear init.

    PyTorch draws `kaiming_uniform(a=sqrt(5))`, whose bound is
    `1/sqrt(fan_in)`; `fan_in` is the product of every axis but the last
    (Keras kernel layout: kh * kw * C_in for a convolution, the input units
    for a dense layer).

    Args:
        seed: as in `HostUniform`.

    Example:
    ```python
    kernel = keras_nvae.layers.FanInUniform()((3, 3, 16, 32))  # |values| < 1/12
    ```
    """

    def __init__(self, seed=None):
        super().__init__(seed=seed)

    def bounds(self, shape):
        limit = 1.0 / np.sqrt(max(1, int(np.prod(shape[:-1]))))
        return -limit, limit

    def get_config(self):
        return {"seed": self.seed}
