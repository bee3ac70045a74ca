"""Export an NVAE as a TensorFlow SavedModel with serving endpoints."""

import keras
import tensorflow as tf

from keras_nvae.distributions import nats_to_bits_per_dim


def export_saved_model(model, filepath, log_likelihood_samples=16, verbose=True):
    """Write `model` as a SavedModel for TF Serving.

    Endpoints (signatures):
      - `sample(num_samples: int32 scalar, temperature: float32 scalar)` ->
        {"images": float32 [0, 1] NHWC}. This is also `serving_default`.
      - `reconstruct(images: uint8 NHWC)` -> {"images": float32 [0, 1] NHWC}.
      - `encode(images: uint8 NHWC)` -> {"z_00": ..., "z_01": ...}, one
        posterior sample per latent group (decoder order).
      - `log_likelihood(images: uint8 NHWC)` -> {"nats": (batch,),
        "bits_per_dim": (batch,)}, importance weighted with
        `log_likelihood_samples` samples.

    BN runs in inference mode (running statistics) everywhere. Random draws
    come from the model's seed-generator state, which advances on every call.

    Args:
        model: a `keras_nvae.NVAE`.
        filepath: output directory.
        log_likelihood_samples: importance samples of the `log_likelihood`
            endpoint.
        verbose: print a summary of the endpoints.

    Returns:
        `filepath`.

    Example:
    ```python
    keras_nvae.export.export_saved_model(model, "nvae_savedmodel")
    served = tf.saved_model.load("nvae_savedmodel")
    images = served.sample(num_samples=4, temperature=0.7)["images"]
    ```
    """
    config = model.config
    image_spec = tf.TensorSpec((None,) + tuple(config.image_shape), tf.uint8, name="images")

    archive = keras.export.ExportArchive()
    archive.track(model)

    def sample(num_samples, temperature):
        logits = model.prior_logits(num_samples, temperature)
        return {"images": model.decoder_distribution(logits).mean()}

    def reconstruct(images):
        return {"images": model.reconstruct(images)}

    def encode(images):
        latents = model(images, training=False)["latents"]
        return {f"z_{i:02d}": z for i, z in enumerate(latents)}

    def log_likelihood(images):
        nats = model.log_likelihood(images, num_samples=log_likelihood_samples)
        return {"nats": nats, "bits_per_dim": nats_to_bits_per_dim(-nats, config.num_dims)}

    archive.add_endpoint(
        "sample",
        sample,
        input_signature=[
            tf.TensorSpec((), tf.int32, name="num_samples"),
            tf.TensorSpec((), tf.float32, name="temperature"),
        ],
    )
    for name, fn in (
        ("reconstruct", reconstruct),
        ("encode", encode),
        ("log_likelihood", log_likelihood),
    ):
        archive.add_endpoint(name, fn, input_signature=[image_spec])
    archive.write_out(filepath, verbose=verbose)
    return filepath
