"""Serve an NVAE SavedModel where keras_nvae cannot be imported; write what every endpoint returns.

Usage: `python serve_saved_model.py SAVED_MODEL INPUTS.npz OUTPUTS.npz`. INPUTS holds `images`
(uint8 NHWC) and `seed_state` (the value the noise seed state is set to before every unseeded
call). OUTPUTS holds each endpoint's outputs under `<how>/<endpoint>/<output>`, where `<how>` is
`function` (the restored functions), `signature` (`served.signatures`, what TF Serving calls) or
`tfsm_layer` (`keras.layers.TFSMLayer`), and `report` (JSON): the signatures' input specs, the
errors of wrong inputs and the imported modules of keras_nvae (none).
"""

import importlib.abc
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class _NotInstalled(importlib.abc.MetaPathFinder):
    """Makes `import keras_nvae` fail as if the library were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "keras_nvae":
            raise ImportError(f"{name} is not installed in the serving process")
        return None


sys.meta_path.insert(0, _NotInstalled())

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

SEED = 5
NUM_SAMPLES = 3
TEMPERATURE = 0.7
LIKELIHOOD_SAMPLES = 2


def seed_state(owner):
    states = [v for v in owner.variables if "seed_generator_state" in v.name]
    assert len(states) == 1, [v.name for v in states]
    return states[0]


def calls(images):
    """{endpoint: (keyword inputs, seeded)} of every endpoint."""
    n, t, seed = tf.constant(NUM_SAMPLES), tf.constant(TEMPERATURE), tf.constant(SEED)
    return {
        "sample": ({"num_samples": n, "temperature": t}, False),
        "sample_seeded": ({"num_samples": n, "temperature": t, "seed": seed}, True),
        "reconstruct": ({"images": images}, False),
        "reconstruct_seeded": ({"images": images, "seed": seed}, True),
        "encode": ({"images": images}, False),
        "log_likelihood": (
            {"images": images, "num_samples": tf.constant(LIKELIHOOD_SAMPLES)},
            False,
        ),
    }


def run(outputs, how, owner, endpoint, call, seeded, start):
    if not seeded:
        seed_state(owner).assign(start)
    for key, value in call().items():
        outputs[f"{how}/{endpoint}/{key}"] = np.asarray(value)


def error_of(call):
    try:
        call()
    except Exception as error:  # noqa: BLE001 - the test checks which error it is.
        return f"{type(error).__name__}: {error}"
    return "no error"


def wrong_inputs(served, images):
    as_float = tf.cast(images, tf.float32)
    cropped = images[:, :-2]
    seed = tf.constant(SEED)
    sample = {"temperature": tf.constant(TEMPERATURE)}
    return {
        "function/float_images": lambda: served.reconstruct(as_float),
        "function/other_shape": lambda: served.encode(cropped),
        "signature/float_images": lambda: served.signatures["reconstruct"](images=as_float),
        "signature/other_shape": lambda: served.signatures["reconstruct_seeded"](
            images=cropped, seed=seed
        ),
        "signature/float_count": lambda: served.signatures["sample"](
            num_samples=tf.constant(2.0), **sample
        ),
        "signature/no_samples": lambda: served.signatures["sample"](
            num_samples=tf.constant(0), **sample
        ),
        "signature/zero_temperature": lambda: served.signatures["sample"](
            num_samples=tf.constant(1), temperature=tf.constant(0.0)
        ),
        "signature/negative_seed": lambda: served.signatures["sample_seeded"](
            num_samples=tf.constant(1), seed=tf.constant(-1), **sample
        ),
        "signature/no_likelihood_samples": lambda: served.signatures["log_likelihood"](
            images=images, num_samples=tf.constant(0)
        ),
    }


def main(path, inputs_path, outputs_path):
    with np.load(inputs_path) as inputs:
        images, start = tf.constant(inputs["images"]), inputs["seed_state"]
    served = tf.saved_model.load(path)
    outputs = {}
    for endpoint, (kwargs, seeded) in calls(images).items():
        function = getattr(served, endpoint)
        run(outputs, "function", served, endpoint, lambda: function(**kwargs), seeded, start)
        signature = served.signatures[endpoint]
        run(outputs, "signature", served, endpoint, lambda: signature(**kwargs), seeded, start)
    for endpoint in ("reconstruct", "encode"):
        layer = keras.layers.TFSMLayer(path, call_endpoint=endpoint)
        run(outputs, "tfsm_layer", layer, endpoint, lambda: layer(images), False, start)
    report = {
        "signatures": {
            name: {
                key: [spec.dtype.name, spec.shape.as_list()]
                for key, spec in function.structured_input_signature[1].items()
            }
            for name, function in served.signatures.items()
        },
        "errors": {name: error_of(call) for name, call in wrong_inputs(served, images).items()},
        "keras_nvae_modules": sorted(m for m in sys.modules if m.split(".")[0] == "keras_nvae"),
    }
    np.savez(outputs_path, report=json.dumps(report), **outputs)


if __name__ == "__main__":
    main(*sys.argv[1:4])
