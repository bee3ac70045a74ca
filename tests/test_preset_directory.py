"""Preset directories: save_to_preset, from_preset(dir), overrides, damaged files, training state."""

import json
import os
import pickle
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from harness import REORDERED_RTOL
from harness import lean_tiny
from harness import noise_seed_state
from harness import tiny_images
from keras_nvae import NVAE
from keras_nvae import loading
from keras_nvae import preset_directory

# Run in a fresh process: loads the preset and writes what the model computes from fixed seeds.
_FRESH_PROCESS = """
import sys
import numpy as np
from keras_nvae import NVAE

preset_dir, images, output = sys.argv[1:4]
model = NVAE.from_preset(preset_dir)
x = np.load(images)
np.savez(
    output,
    sample=model.sample(2, temperature=0.7, seed=0),
    reconstruct=model.reconstruct(x, seed=1),
    encode_0=model.encode(x, seed=2)[0],
    log_likelihood=model.log_likelihood(x, num_samples=2, seed=3),
)
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A lean tiny NVAE with non-default BN statistics and its preset directory."""
    keras.utils.set_random_seed(7)
    model = lean_tiny()
    rng = np.random.RandomState(0)
    for weight in model.non_trainable_weights:
        if "moving_variance" in weight.path:
            weight.assign(rng.uniform(0.5, 2.0, weight.shape).astype("float32"))
    directory = str(tmp_path_factory.mktemp("preset") / "lean_tiny")
    model.save_to_preset(directory, description="A lean tiny NVAE.", source="a test")
    return model, directory


def _same_weights(model, other):
    # Both models are built in the same order (their auto-numbered layer names differ).
    assert [w.shape for w in model.weights] == [w.shape for w in other.weights]
    for weight, theirs in zip(model.weights, other.weights):
        np.testing.assert_array_equal(weight.numpy(), theirs.numpy(), err_msg=weight.path)


def test_preset_files_and_metadata(saved):
    model, directory = saved
    assert sorted(os.listdir(directory)) == ["config.json", "metadata.json", "model.weights.h5"]
    with open(os.path.join(directory, "config.json")) as file:
        config = json.load(file)
    assert config["library"] == "keras_nvae" and config["class_name"] == "NVAE"
    assert config["config"] == model.config.to_dict()
    metadata = preset_directory.read_metadata(directory)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert metadata == {
        "description": "A lean tiny NVAE.",
        "trainable_parameters": trainable,
        "library": "keras_nvae",
        "library_version": __import__("keras_nvae").__version__,
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
        "source": "a test",
        "training_state": False,
    }


def test_preset_reloads_to_identical_outputs_in_a_fresh_process(saved, tmp_path):
    model, directory = saved
    x = tiny_images(2)
    np.save(tmp_path / "x.npy", x)
    output = tmp_path / "outputs.npz"
    subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS, directory, str(tmp_path / "x.npy"), str(output)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    with np.load(output) as fresh:
        # The eager outputs are the same float32 operations on the same weights: bit for bit.
        np.testing.assert_array_equal(fresh["sample"], model.sample(2, temperature=0.7, seed=0))
        np.testing.assert_array_equal(fresh["reconstruct"], model.reconstruct(x, seed=1))
        np.testing.assert_array_equal(fresh["encode_0"], model.encode(x, seed=2)[0])
        # The estimator is a tf.function: the fresh process optimises its graph (Grappler),
        # which may reorder reductions.
        np.testing.assert_allclose(
            fresh["log_likelihood"],
            model.log_likelihood(x, num_samples=2, seed=3),
            rtol=REORDERED_RTOL,
        )


def test_overrides_that_keep_weight_shapes_apply(saved):
    model, directory = saved
    loaded = NVAE.from_preset(directory, remat=True, official_dmol=True, learning_rate=1e-3)
    assert loaded.config == model.config.replace(
        remat=True, official_dmol=True, learning_rate=1e-3
    )
    _same_weights(model, loaded)


@pytest.mark.parametrize(
    "overrides, named",
    [
        # Fewer weights than the file holds: Keras' load_weights alone would accept this.
        ({"use_se": False}, "use_se"),
        ({"num_channels_enc": 4, "remat": True}, "num_channels_enc"),
        ({"ema_decay": 0.9}, "ema_decay"),
    ],
)
def test_overrides_that_change_weight_shapes_name_the_field(saved, overrides, named):
    _, directory = saved
    with pytest.raises(ValueError, match=rf"^Overriding {named} changes the shapes"):
        NVAE.from_preset(directory, **overrides)


class _CreatesFile:
    """Unpickles as `open(path, "w")`: a pickle that would run code (create `path`)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _rewrite_json(name, change):
    def damage(directory):
        path = os.path.join(directory, name)
        with open(path) as file:
            content = json.load(file)
        with open(path, "w") as file:
            json.dump(change(content), file)

    return damage


def _truncate(name):
    def damage(directory):
        path = os.path.join(directory, name)
        with open(path, "rb") as file:
            content = file.read()
        with open(path, "wb") as file:
            file.write(content[: len(content) // 2])

    return damage


def _other_weights(directory):
    lean_tiny(use_se=False).save_weights(os.path.join(directory, "model.weights.h5"))


def _pickled_weights(directory):
    marker = os.path.join(os.path.dirname(directory), "created_by_the_pickle")
    with open(os.path.join(directory, "model.weights.h5"), "wb") as file:
        pickle.dump(_CreatesFile(marker), file)


_KERAS_HUB_CONFIG = {
    "module": "keras_hub.src.models.gemma.gemma_backbone",
    "class_name": "GemmaBackbone",
    "config": {"vocabulary_size": 256},
    "registered_name": "keras_hub>GemmaBackbone",
}

DIRECTORY_CASES = {
    "missing_config": (lambda d: os.remove(f"{d}/config.json"), r"has no config.json"),
    "missing_weights": (lambda d: os.remove(f"{d}/model.weights.h5"), r"has no model.weights.h5"),
    "missing_metadata": (lambda d: os.remove(f"{d}/metadata.json"), r"has no metadata.json"),
    "truncated_config": (_truncate("config.json"), r"config.json' is not valid JSON .*truncated"),
    "truncated_metadata": (_truncate("metadata.json"), r"metadata.json' is not valid JSON"),
    "truncated_weights": (
        _truncate("model.weights.h5"),
        r"model.weights.h5' is not a readable HDF5 weights file .*truncated",
    ),
    "foreign_config": (
        _rewrite_json("config.json", lambda _: _KERAS_HUB_CONFIG),
        r"holds the configuration of 'GemmaBackbone' from "
        r"'keras_hub.src.models.gemma.gemma_backbone', not of a keras_nvae NVAE",
    ),
    "invalid_config": (
        _rewrite_json("config.json", lambda c: {**c, "config": {**c["config"], "num_flows": -1}}),
        r"is not a valid NVAEConfig: NVAEConfig.num_flows must be an integer >= 0",
    ),
    "newer_format": (
        _rewrite_json("config.json", lambda c: {**c, "format_version": 2}),
        r"has format_version 2; this keras_nvae reads version 1",
    ),
    "foreign_weights": (_other_weights, r"does not hold the weights of the configuration"),
    "pickled_weights": (_pickled_weights, r"is not a readable HDF5 weights file"),
}


@pytest.mark.parametrize("case", sorted(DIRECTORY_CASES))
def test_damaged_preset_directory(saved, tmp_path, case):
    damage, message = DIRECTORY_CASES[case]
    directory = str(tmp_path / "preset")
    shutil.copytree(saved[1], directory)
    damage(directory)
    with pytest.raises(loading.ModelFileError, match=message):
        NVAE.from_preset(directory)
    assert not (tmp_path / "created_by_the_pickle").exists()


def test_missing_preset_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No preset directory at '.*nope'"):
        NVAE.from_preset(str(tmp_path / "nope"))


def test_training_state_round_trip(saved, tmp_path):
    model = lean_tiny()
    with pytest.raises(ValueError, match=r"needs the model's optimizer: call model.compile"):
        model.save_to_preset(str(tmp_path / "no_optimizer"), include_training_state=True)
    model.compile(total_steps=10)
    model.optimizer.build(model.trainable_variables)  # To give its variables values to save.
    # A training state where nothing has its initial value: slots, step counters, noise seed.
    rng = np.random.RandomState(1)
    for variable in model.optimizer.variables:
        variable.assign(rng.uniform(0.1, 1.0, variable.shape).astype(variable.dtype))
    model.global_step.assign(6)
    noise_seed_state(model).assign([11, 12])
    directory = str(tmp_path / "preset")
    model.save_to_preset(directory, include_training_state=True)
    assert preset_directory.read_metadata(directory)["training_state"] is True

    loaded = NVAE.from_preset(directory)
    with pytest.raises(ValueError, match=r"load_training_state needs the model's optimizer"):
        preset_directory.load_training_state(loaded, directory)
    loaded.compile(total_steps=10)
    preset_directory.load_training_state(loaded, directory)
    _same_weights(model, loaded)
    assert int(loaded.global_step.numpy()) == 6
    np.testing.assert_array_equal(noise_seed_state(loaded).numpy(), [11, 12])
    for variable, theirs in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(variable.numpy(), theirs.numpy(), err_msg=variable.path)

    # Saving again without it removes the old state: a preset never holds a stale one.
    model.save_to_preset(directory)
    with pytest.raises(loading.ModelFileError, match=r"has no training state; save it with"):
        preset_directory.load_training_state(loaded, directory)
