"""A NaN in one replica's part of the batch: both replicas skip the step (2 logical CPUs).

Run as a separate process: logical devices must be configured before TensorFlow
initialises. Prints JSON: the variables the bad step changed (any copy on any
device), the guard's counters, whether the two replicas' copies agree, and how
many variables a good step moves afterwards.
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


def copies(strategy, model):
    """Every variable's value on every replica, by path (not the noise seed)."""
    variables = [(v.path.removeprefix(model.name + "/"), v) for v in model.variables]
    variables += [("optimizer/" + v.path, v) for v in model.optimizer.variables]
    return {
        path: [np.array(t) for t in strategy.experimental_local_results(v.value)]
        for path, v in variables
        if "seed_generator_state" not in path
    }


def changed(before, after):
    return sorted(
        path for path in before
        if any(not np.array_equal(a, b) for a, b in zip(before[path], after[path]))
    )


images = np.random.RandomState(0).randint(0, 256, (8, 16, 16, 3)).astype("float32") / 255.0
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    # One latent scale and no flows keep the traced step, and so the test, short.
    model = NVAE.from_preset("tiny", num_latent_scales=1, num_flows=0)
    model.compile(total_steps=10)
model.fit(images, batch_size=8, epochs=1, verbose=0)
before = copies(strategy, model)
bad = images.copy()
bad[1, 2, 3, 0] = np.nan  # in the first half of the global batch: replica 0's images
model.fit(bad, batch_size=8, epochs=1, verbose=0, shuffle=False)
after = copies(strategy, model)
model.fit(images[::-1].copy(), batch_size=8, epochs=1, verbose=0)
good = copies(strategy, model)
guard = model.step_guard
json.dump(
    {
        "changed": changed(before, after),
        "nonfinite_steps": int(keras.ops.convert_to_numpy(guard.nonfinite_steps)),
        "first_nonfinite": int(keras.ops.convert_to_numpy(guard.first_nonfinite)),
        "replicas_equal": all(
            all(np.array_equal(values[0], other) for other in values[1:])
            for values in after.values()
        ),
        "moved_after_good_step": len(changed(after, good)),
    },
    sys.stdout,
)
