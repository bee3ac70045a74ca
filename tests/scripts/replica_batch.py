"""`fit` given batches smaller than the replica count (2 logical CPUs); prints JSON.

Run as a separate process: logical devices must be configured before TensorFlow
initialises. Prints the message of each case's ValueError (or null when none was
raised) and what changed in the model or its optimizer (null when nothing did).
"""

import json
import os
import sys

import tensorflow as tf

cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
# Grappler's graph rewrites off, as in the test processes (tests/conftest.py).
tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})

# This repository's keras_nvae and tests/harness.py (the script's own folder comes first).
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.dirname(TESTS), TESTS]

from harness import assert_state_unchanged  # noqa: E402
from harness import lean_tiny  # noqa: E402
from harness import model_state  # noqa: E402
from harness import tiny_images  # noqa: E402
from keras_nvae.training import optimizers  # noqa: E402

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    model = lean_tiny()
    model.compile(optimizer=optimizers.NVAEAdamax(1e-3), total_steps=10)
    model.optimizer.build(model.trainable_variables)

CASES = {
    "array_batch_of_1": lambda: model.fit(tiny_images(4), batch_size=1, verbose=0),
    "array_last_batch_of_1": lambda: model.fit(tiny_images(5), batch_size=2, verbose=0),
    "dataset_batch_of_1": lambda: model.fit(
        tf.data.Dataset.from_tensor_slices(tiny_images(4)).batch(1, drop_remainder=True),
        verbose=0,
    ),
    "validation_last_batch_of_1": lambda: model.fit(
        tiny_images(4), batch_size=2, validation_data=(tiny_images(3),), verbose=0
    ),
}

before = model_state(model)
messages = {}
for name, call in CASES.items():
    try:
        call()
        messages[name] = None
    except ValueError as error:
        messages[name] = str(error)
try:
    assert_state_unchanged(model, before)
    state_error = None
except AssertionError as error:
    state_error = str(error)
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "messages": messages,
                  "state_error": state_error, "library": sys.modules["keras_nvae"].__file__}))
