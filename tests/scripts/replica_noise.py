"""Latent noise of two replicas (2 logical CPUs, MirroredStrategy); prints JSON.

Run as a separate process: logical devices must be configured before TensorFlow
initialises. Both replicas encode the same images with the model's seed stream;
the script reports how far apart their posterior samples are, and whether an
explicit seed gives the replicas the same samples.
"""

import json
import sys

import numpy as np
import tensorflow as tf

cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
# Grappler's graph rewrites off, as in the test processes (tests/conftest.py).
tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})

import keras  # noqa: E402

from keras_nvae import NVAE  # noqa: E402
from keras_nvae import noise  # noqa: E402

keras.utils.set_random_seed(0)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    model = NVAE.from_preset("tiny", num_latent_scales=1, num_flows=0)
images = np.random.RandomState(0).randint(0, 256, (2, 16, 16, 3)).astype("uint8")
x = model.preprocess_images(images)[0]


@tf.function
def latents(seed):
    return strategy.run(
        lambda: model.forward_terms(x, False, seeds=noise.CallSeeds(seed))["latents"][-1]
    )


def replica_gap(seed):
    first, second = strategy.experimental_local_results(latents(seed))
    return float(np.max(np.abs(first.numpy() - second.numpy())))


json.dump({"stream_gap": replica_gap(None), "seeded_gap": replica_gap(5)}, sys.stdout)
