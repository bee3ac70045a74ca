"""Where NVAE's random numbers come from: the model's seed stream or a call's seed.

Every random draw of an NVAE (latent noise, pixel samples) is a stateless op
given a seed, a shape-(2,) int32 tensor. Without an explicit seed, the seed is
the next state of a `keras.random.SeedGenerator`: the model's own, whose
initial state comes from `keras.utils.set_random_seed` when the model is
built. Under a distribution strategy the replica id is folded into that seed,
so every replica draws its own noise. An explicit integer `seed=` of an
inference call gives every draw of the call a seed derived from the seed and
the draw's purpose alone (`CallSeeds`), so the same call with the same seed
gives the same numbers.
"""

import keras
import tensorflow as tf

MAX_SEED = 2**31 - 1
_LATENT = 0
_PIXELS = 1


def generator_seed(generator):
    """The next stateless seed of `generator`, distinct per replica.

    Args:
        generator: a `keras.random.SeedGenerator` (its state advances).

    Returns:
        A shape-(2,) int32 seed tensor.
    """
    seed = tf.cast(generator.next(), tf.int32)
    if tf.distribute.get_strategy().num_replicas_in_sync > 1:
        replica = tf.distribute.get_replica_context()
        if replica is not None:
            seed = tf.random.experimental.stateless_fold_in(
                seed, replica.replica_id_in_sync_group
            )
    return seed


def base_seed(seed):
    """The stateless base seed of `seed`, an int or a scalar int32 tensor: a shape-(2,)
    int32 tensor."""
    seed = tf.convert_to_tensor(seed, tf.int32)
    return tf.stack([seed, tf.zeros_like(seed)])


class CallSeeds:
    """The seeds of the random draws of one inference call.

    Args:
        seed: None (draws use the model's seed generator), an int in
            [0, 2**31) (draws are reproducible functions of the seed), a
            `keras.random.SeedGenerator` (draws advance it), or the
            shape-(2,) int32 tensor `base_seed(n)` of an int `n`, which
            gives the draws of `n` (a `tf.function` taking it is traced once
            for all seeds).

    Raises:
        ValueError: `seed` is none of those.

    Example:
    ```python
    seeds = CallSeeds(3)
    eps = tf.random.stateless_normal((2, 4, 4, 8), seed=seeds.latent(0))
    ```
    """

    def __init__(self, seed=None):
        self._generator = None
        self._base = None
        if isinstance(seed, keras.random.SeedGenerator):
            self._generator = seed
        elif tf.is_tensor(seed):
            self._base = seed
        elif seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
                raise ValueError(
                    "`seed` must be None, an int in [0, 2**31) or a "
                    f"keras.random.SeedGenerator, got {seed!r}."
                )
            self._base = base_seed(seed)

    @classmethod
    def _from_base(cls, base):
        seeds = cls()
        seeds._base = base
        return seeds

    def _draw(self, purpose, index):
        if self._generator is not None:
            return generator_seed(self._generator)
        if self._base is None:
            return None
        seed = tf.random.experimental.stateless_fold_in(self._base, purpose)
        return tf.random.experimental.stateless_fold_in(seed, index)

    def latent(self, index):
        """Seed of the latent noise of group `index`, or None for the model's stream."""
        return self._draw(_LATENT, index)

    def pixels(self):
        """Seed of the pixel samples, or None for the model's stream."""
        return self._draw(_PIXELS, 0)

    def folded(self, value):
        """Seeds for the `value`-th repetition of the call's draws (`value` may be a
        tensor); the same seeds when they come from a generator."""
        if self._base is None:
            return self
        return CallSeeds._from_base(tf.random.experimental.stateless_fold_in(self._base, value))
