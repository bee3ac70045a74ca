"""One NVAE train step on 1 device and on 2 replicas (2 logical CPUs); prints JSON.

Run as a separate process: logical devices must be configured before TensorFlow
initialises. Latent noise is fixed to zero so both runs see identical inputs.
"""

import json
import sys

import numpy as np
import tensorflow as tf

cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
# Grappler's graph rewrites off, as in the test processes (tests/conftest.py).
tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})

from keras_nvae import NVAE  # noqa: E402


class ZeroNoiseNVAE(NVAE):
    """Posterior samples at the mean: removes per-replica noise differences."""

    def _standard_normal(self, batch_size, shape, seed=None):
        return tf.zeros(tf.concat([[batch_size], shape], 0))


def one_step(strategy):
    with strategy.scope():
        model = ZeroNoiseNVAE(CONFIG)
        model.set_weights(initial)
        model.compile(total_steps=10)
    x = np.random.RandomState(0).randint(0, 256, (8, 16, 16, 3)).astype("uint8")
    ds = tf.data.Dataset.from_tensor_slices(x).batch(8)
    history = model.fit(ds, epochs=1, verbose=0)
    weights = model.get_weights()
    return history.history["loss"][0], weights


# KL balancing uses per-replica batch statistics (as the official code); switch it
# off so the two runs optimise the same objective. One latent scale and no flows keep
# the traced step, and so the test, short.
CONFIG = NVAE.from_preset("tiny", kl_balance=False, num_latent_scales=1, num_flows=0).config
reference = ZeroNoiseNVAE(CONFIG)
initial = reference.get_weights()
loss_1, weights_1 = one_step(tf.distribute.OneDeviceStrategy("/cpu:0"))
loss_2, weights_2 = one_step(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
# Relative to each tensor's scale, floored at 1e-3 (BN means of bias-free convs are ~1e-8).
diffs = [
    float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-3))
    for a, b in zip(weights_1, weights_2)
    if a.dtype.kind == "f"
]
moved = [float(np.max(np.abs(a - b))) for a, b in zip(weights_1, initial) if a.dtype.kind == "f"]
json.dump({"loss_1": loss_1, "loss_2": loss_2, "max_rel_diff": max(diffs), "max_moved": max(moved)}, sys.stdout)
