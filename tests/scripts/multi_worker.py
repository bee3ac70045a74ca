"""One worker of a two-worker MultiWorkerMirroredStrategy NVAE run on loopback.

Usage: multi_worker.py PORT0 PORT1 INDEX OUTPUT_JSON. Both workers train the tiny
preset (one latent scale, no flows) for two steps on the same data; each writes its final loss, step and a weight
checksum to its OUTPUT_JSON.
"""

import json
import os
import sys

port0, port1, index, output = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
os.environ["TF_CONFIG"] = json.dumps(
    {
        "cluster": {"worker": [f"127.0.0.1:{port0}", f"127.0.0.1:{port1}"]},
        "task": {"type": "worker", "index": index},
    }
)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# Grappler's graph rewrites off, as in the test processes (tests/conftest.py).
tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})

from keras_nvae import NVAE  # noqa: E402

# The default heartbeat timeout of the coordination service aborts the run when a
# loaded 2-core CI machine starves a worker during the long first graph compile;
# configure the service (before the strategy does) with a generous timeout.
from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2  # noqa: E402
from tensorflow.python.eager import context  # noqa: E402

context.context().configure_coordination_service(
    service_type="standalone",
    service_leader="/job:worker/replica:0/task:0",
    heartbeat_timeout_in_ms=900_000,
    coordinated_jobs=[coordination_config_pb2.CoordinatedJob(name="worker", num_tasks=2)],
)
strategy = tf.distribute.MultiWorkerMirroredStrategy()
with strategy.scope():
    model = NVAE.from_preset("tiny", num_latent_scales=1, num_flows=0)
    model.compile(total_steps=2)
images = np.random.RandomState(0).randint(0, 256, (16, 16, 16, 3)).astype("uint8")
dataset = tf.data.Dataset.from_tensor_slices(images).batch(8)
options = tf.data.Options()
options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
history = model.fit(dataset.with_options(options), epochs=1, verbose=0)
with open(output, "w") as f:
    json.dump(
        {
            "loss": float(np.asarray(history.history["loss"][-1]).reshape(())),
            "global_step": int(model.global_step.numpy()),
            "checksum": float(sum(np.sum(w) for w in model.get_weights() if w.dtype.kind == "f")),
        },
        f,
    )
