"""SavedModel export: every endpoint's values served where keras_nvae is not importable, its
strict signatures and the errors of wrong inputs."""

import json
import re
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from harness import REORDERED_RTOL
from harness import lean_tiny
from harness import noise_seed_state
from harness import tiny_images

SERVE_SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "serve_saved_model.py")
# The serving script's inputs (tests/scripts/serve_saved_model.py).
SEED, NUM_SAMPLES, TEMPERATURE, LIKELIHOOD_SAMPLES = 5, 3, 0.7, 2


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A lean tiny NVAE, its SavedModel, and what the SavedModel served in a process without
    keras_nvae, from the same images and noise seed state."""
    model = lean_tiny()
    directory = tmp_path_factory.mktemp("export")
    path = str(directory / "saved")
    model.export(path, verbose=False)
    x = tiny_images(2)
    start = noise_seed_state(model).numpy()
    np.savez(directory / "inputs.npz", images=x, seed_state=start)
    subprocess.run(
        [sys.executable, SERVE_SCRIPT, path, str(directory / "inputs.npz"), str(directory / "o.npz")],
        check=True,
        capture_output=True,
        timeout=600,
    )
    with np.load(directory / "o.npz") as data:
        served = {key: data[key] for key in data.files}
    report = json.loads(str(served.pop("report")))
    return model, x, start, served, report


def _keras_outputs(model, x, start):
    """{endpoint: {output: value}} the Keras model computes for the serving script's calls."""

    def seeded(fn):
        noise_seed_state(model).assign(start)
        return fn()

    nats = seeded(lambda: model.log_likelihood(x, num_samples=LIKELIHOOD_SAMPLES)).numpy()
    latents = seeded(lambda: model.encode(x))
    return {
        "sample": {"images": seeded(lambda: model.sample(NUM_SAMPLES, temperature=TEMPERATURE))},
        "sample_seeded": {"images": model.sample(NUM_SAMPLES, TEMPERATURE, seed=SEED)},
        "reconstruct": {"images": seeded(lambda: model.reconstruct(x))},
        "reconstruct_seeded": {"images": model.reconstruct(x, seed=SEED)},
        "encode": {f"z_{i:02d}": z for i, z in enumerate(latents)},
        "log_likelihood": {"nats": nats, "bits_per_dim": -nats / (16 * 16 * 3 * np.log(2.0))},
    }


@pytest.fixture(scope="module")
def keras_outputs(exported):
    model, x, start, _, _ = exported
    return _keras_outputs(model, x, start)


def _assert_same(served, expected, output):
    if output == "images":
        # Images in [0, 1]: the relative budget of a reordered float32 computation, as absolute.
        np.testing.assert_allclose(served, expected, rtol=0, atol=REORDERED_RTOL)
    else:
        np.testing.assert_allclose(served, expected, rtol=REORDERED_RTOL, atol=REORDERED_RTOL)


ENDPOINTS = (
    "sample",
    "sample_seeded",
    "reconstruct",
    "reconstruct_seeded",
    "encode",
    "log_likelihood",
)


@pytest.mark.parametrize("how", ["function", "signature"])
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_endpoint_serves_the_keras_values(exported, keras_outputs, endpoint, how):
    # Served with plain tf.saved_model.load, as the restored function and as the signature TF
    # Serving calls. The seeded endpoints match without the seed state being set.
    served = exported[3]
    expected = keras_outputs[endpoint]
    keys = sorted(key.split("/")[2] for key in served if key.startswith(f"{how}/{endpoint}/"))
    assert keys == sorted(expected)
    for output, value in expected.items():
        _assert_same(served[f"{how}/{endpoint}/{output}"], value, output)


@pytest.mark.parametrize("endpoint", ["reconstruct", "encode"])
def test_single_input_endpoints_through_tfsm_layer(exported, keras_outputs, endpoint):
    served = exported[3]
    for output, value in keras_outputs[endpoint].items():
        _assert_same(served[f"tfsm_layer/{endpoint}/{output}"], value, output)


def test_serving_process_has_no_keras_nvae(exported):
    assert exported[4]["keras_nvae_modules"] == []


def test_signatures_are_strict(exported):
    images = ["uint8", [None, 16, 16, 3]]
    count, temperature, seed = ["int32", []], ["float32", []], ["int32", []]
    sample = {"num_samples": count, "temperature": temperature}
    assert exported[4]["signatures"] == {
        "serving_default": sample,
        "sample": sample,
        "sample_seeded": {**sample, "seed": seed},
        "reconstruct": {"images": images},
        "reconstruct_seeded": {"images": images, "seed": seed},
        "encode": {"images": images},
        "log_likelihood": {"images": images, "num_samples": count},
    }


WRONG_INPUTS = {
    "function/float_images": r"^TypeError: Binding inputs to tf.function failed due to `Can not "
    r"cast TensorSpec\(shape=\(2, 16, 16, 3\), dtype=tf.float32, name='images'\) to "
    r"TensorSpec\(shape=\(None, 16, 16, 3\), dtype=tf.uint8",
    "function/other_shape": r"^TypeError: .*Can not cast TensorSpec\(shape=\(2, 14, 16, 3\), "
    r"dtype=tf.uint8, name='images'\) to TensorSpec\(shape=\(None, 16, 16, 3\)",
    "signature/float_images": r"^InvalidArgumentError: .*was expected to be a uint8 tensor but "
    r"is a float tensor",
    "signature/other_shape": r"^InvalidArgumentError: .*images must be uint8 of shape \(batch, "
    r"16, 16, 3\), got\] \[2 14 16 3\]",
    "signature/float_count": r"^InvalidArgumentError: .*was expected to be a int32 tensor but is "
    r"a float tensor",
    "signature/no_samples": r"^InvalidArgumentError: .*num_samples must be >= 1, got\] \[0\]",
    "signature/zero_temperature": r"^InvalidArgumentError: .*temperature must be > 0, got\] \[0\]",
    "signature/negative_seed": r"^InvalidArgumentError: .*seed must be >= 0, got\] \[-1\]",
    "signature/no_likelihood_samples": r"^InvalidArgumentError: .*num_samples must be >= 1",
}


@pytest.mark.parametrize("case", sorted(WRONG_INPUTS))
def test_wrong_inputs_get_the_documented_error(exported, case):
    error = exported[4]["errors"][case]
    assert re.search(WRONG_INPUTS[case], error, flags=re.DOTALL), error


def test_log_likelihood_is_at_least_the_elbo_on_average(tiny):
    x = tiny_images(2)
    num_samples = 8
    start = noise_seed_state(tiny).numpy()
    iw = tiny.log_likelihood(x, num_samples=num_samples, images_per_pass=len(x) * num_samples)
    iw = iw.numpy()
    # The same seed state gives the importance samples as one forward pass over every image
    # repeated K times (K copies fit in one pass here); with flows (as in tiny) the KL is
    # log q - log p, so -(recon_nll + KL) is the log importance weight.
    noise_seed_state(tiny).assign(start)
    out = tiny(np.repeat(x, num_samples, axis=0), training=False)
    log_weights = -(out["recon_nll"] + tf.reduce_sum(out["kl"], 1)).numpy().astype(np.float64)
    log_weights = log_weights.reshape(len(x), num_samples).T
    elbo = np.mean(log_weights, axis=0)
    # The IW estimate is the log-mean-exp of these log weights (~-5e3 nats each).
    expected = np.logaddexp.reduce(log_weights, axis=0) - np.log(num_samples)
    np.testing.assert_allclose(iw, expected, rtol=REORDERED_RTOL)
    # log p(x) >= IW bound >= ELBO: on the same draws, log-mean-exp >= mean (Jensen).
    assert np.all(iw >= elbo - 1.0)
