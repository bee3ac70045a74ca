"""Export an NVAE as a TensorFlow SavedModel with serving endpoints.

Every endpoint has a strict signature (`tf.TensorSpec` dtypes and shapes);
the SavedModel needs TensorFlow only, not keras_nvae, to be served.

- `sample(num_samples: int32 (), temperature: float32 ())` -> `images`
  float32 [0, 1] NHWC; also `serving_default`.
- `sample_seeded(num_samples, temperature, seed: int32 ())` -> `images`.
- `reconstruct(images: uint8 (batch, H, W, C))` -> `images` float32 [0, 1].
- `reconstruct_seeded(images, seed: int32 ())` -> `images`.
- `encode(images)` -> `z_00`, `z_01`, ...: one posterior sample per latent
  group (decoder order).
- `log_likelihood(images, num_samples: int32 ())` -> `nats` and
  `bits_per_dim`, (batch,), importance weighted.

BN runs in inference mode (running statistics) everywhere. The unseeded
endpoints draw from the model's seed-generator state, which advances on every
call; the seeded ones give, for a `seed` in [0, 2**31), the numbers of the
Keras model's `sample(..., seed=seed)` and `reconstruct(..., seed=seed)`.

Wrong inputs are refused before anything is computed:

- called as `served.<endpoint>(...)` (the functions `tf.saved_model.load`
  restores, which `keras.layers.TFSMLayer` calls), another dtype or image
  shape raises `TypeError` ("Binding inputs to tf.function failed due to
  `Can not cast TensorSpec(...) to TensorSpec(...)`");
- called through `served.signatures["<endpoint>"]` (what TF Serving calls),
  another dtype raises
  `tf.errors.InvalidArgumentError` ("... was expected to be a uint8 tensor
  but is a float tensor"), and images of another shape raise it with "images
  must be uint8 of shape (batch, H, W, C), got [...]";
- values out of range raise `tf.errors.InvalidArgumentError` naming the
  input: "num_samples must be >= 1", "temperature must be > 0", "seed must
  be >= 0".
"""

import keras
import tensorflow as tf

from keras_nvae import noise as noise_lib
from keras_nvae.distributions import nats_to_bits_per_dim

_COUNT = tf.TensorSpec((), tf.int32, name="num_samples")
_TEMPERATURE = tf.TensorSpec((), tf.float32, name="temperature")
_SEED = tf.TensorSpec((), tf.int32, name="seed")


def _checked(value, check, message):
    """`value`, failing at run time with `message` unless `check(value)` holds."""
    with tf.control_dependencies([tf.debugging.Assert(check(value), [message, value])]):
        return tf.identity(value)


def _checked_count(num_samples):
    return _checked(num_samples, lambda n: n >= 1, "num_samples must be >= 1, got")


def _checked_images(images, image_shape):
    """`images`, failing at run time unless they are (batch,) + `image_shape`."""
    expected = tf.constant(image_shape, tf.int32)
    shape = tf.shape(images)
    valid = tf.logical_and(tf.size(shape) == 4, tf.reduce_all(shape[1:] == expected))
    message = f"images must be uint8 of shape (batch, {', '.join(map(str, image_shape))}), got"
    with tf.control_dependencies([tf.debugging.Assert(valid, [message, shape], summarize=4)]):
        return tf.identity(images)


def _checked_seed(seed):
    return noise_lib.base_seed(_checked(seed, lambda s: s >= 0, "seed must be >= 0, got"))


def _endpoints(model):
    """{name: (function, input signature)} of every endpoint of `model`."""
    config = model.config
    images = tf.TensorSpec((None,) + tuple(config.image_shape), tf.uint8, name="images")

    def sample(num_samples, temperature, seed=None):
        temperature = _checked(temperature, lambda t: t > 0, "temperature must be > 0, got")
        logits = model.prior_logits(_checked_count(num_samples), temperature, seed=seed)
        return {"images": model.decoder_distribution(logits).mean()}

    def sample_seeded(num_samples, temperature, seed):
        return sample(num_samples, temperature, _checked_seed(seed))

    def reconstruct(images):
        return {"images": model.reconstruct(_checked_images(images, config.image_shape))}

    def reconstruct_seeded(images, seed):
        images = _checked_images(images, config.image_shape)
        return {"images": model.reconstruct(images, seed=_checked_seed(seed))}

    def encode(images):
        latents = model.encode(_checked_images(images, config.image_shape))
        return {f"z_{i:02d}": z for i, z in enumerate(latents)}

    def log_likelihood(images, num_samples):
        images = _checked_images(images, config.image_shape)
        nats = model.log_likelihood(images, num_samples=num_samples)
        return {"nats": nats, "bits_per_dim": nats_to_bits_per_dim(-nats, config.num_dims)}

    return {
        "sample": (sample, [_COUNT, _TEMPERATURE]),
        "sample_seeded": (sample_seeded, [_COUNT, _TEMPERATURE, _SEED]),
        "reconstruct": (reconstruct, [images]),
        "reconstruct_seeded": (reconstruct_seeded, [images, _SEED]),
        "encode": (encode, [images]),
        "log_likelihood": (log_likelihood, [images, _COUNT]),
    }


def export_saved_model(model, filepath, verbose=True):
    """Write `model` as a SavedModel for TF Serving (endpoints: see the module docstring).

    Args:
        model: a `keras_nvae.NVAE`.
        filepath: output directory.
        verbose: print a summary of the endpoints.

    Returns:
        `filepath`.

    Example:
    ```python
    keras_nvae.export.export_saved_model(model, "nvae_savedmodel")
    served = tf.saved_model.load("nvae_savedmodel")
    images = served.sample_seeded(num_samples=4, temperature=0.7, seed=0)["images"]
    ```
    """
    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, (function, signature) in _endpoints(model).items():
        archive.add_endpoint(name, function, input_signature=signature)
    archive.write_out(filepath, verbose=verbose)
    return filepath
