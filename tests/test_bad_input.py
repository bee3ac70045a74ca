"""The bad-input table: each case raises a specific, readable error and changes no model state.

Every case names the error type and a fragment of its message. Where a model is involved, every
variable of the model and of its optimizer (weights, BN statistics, power-iteration vectors,
seed-generator state, step counters, optimizer slots) is compared before and after the call.
BUILD_NOTES.md ("Bad input") lists the same cases with their messages.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from harness import Reference
from harness import assert_state_unchanged
from harness import fixed_noise
from harness import model_state
from harness import tiny_images
from keras_nvae import NVAE
from keras_nvae import config as config_lib
from keras_nvae.official import convert
from keras_nvae import data
from keras_nvae import loading
from keras_nvae.training import optimizers

SHAPE = r"NHWC images of shape \(batch, 16, 16, 3\); got shape "
DTYPE = r"NVAE expects images as uint8 \[0, 255\] or float \[0, 1\]; got dtype "
RANGE = r"NVAE expects float images in \[0, 1\]; got values in "


@pytest.fixture(scope="module")
def trainable():
    """A compiled `tiny` NVAE whose optimizer is built, so its slots are compared too."""
    model = NVAE.from_preset("tiny")
    model.compile(optimizer=optimizers.NVAEAdamax(1e-3), total_steps=10)
    model.optimizer.build(model.trainable_variables)
    return model


@pytest.fixture(scope="module")
def bernoulli():
    """The `tiny` architecture with a Bernoulli likelihood (expects binary images)."""
    return NVAE.from_preset("tiny", likelihood="bernoulli")


def _batches(images, batch_size=4):
    return tf.data.Dataset.from_tensor_slices(images).batch(batch_size)


# (model fixture, call, error type, message fragment); the call gets the model.
MODEL_CASES = {
    "rank_3_images": (
        "tiny",
        lambda m: m(np.zeros((16, 16, 3), "uint8")),
        ValueError,
        SHAPE + r"\(16, 16, 3\)",
    ),
    "wrong_channels": (
        "tiny",
        lambda m: m(np.zeros((2, 16, 16, 1), "uint8")),
        ValueError,
        SHAPE + r"\(2, 16, 16, 1\)",
    ),
    "wrong_size": (
        "tiny",
        lambda m: m.reconstruct(np.zeros((2, 32, 32, 3), "uint8")),
        ValueError,
        SHAPE + r"\(2, 32, 32, 3\)",
    ),
    "int32_images": (
        "tiny",
        lambda m: m.encode(np.zeros((2, 16, 16, 3), "int32")),
        ValueError,
        DTYPE + "int32",
    ),
    "float_images_0_255": (
        "tiny",
        lambda m: m(np.full((2, 16, 16, 3), 255.0, "float32")),
        ValueError,
        RANGE + r"\[255, 255\]",
    ),
    "nan_pixels_eager": (
        "tiny",
        lambda m: m.log_likelihood(np.full((2, 16, 16, 3), np.nan, "float32")),
        ValueError,
        RANGE + r"\[nan, nan\]",
    ),
    "non_binary_bernoulli": (
        "bernoulli",
        lambda m: m(np.full((2, 16, 16, 3), 0.5, "float32")),
        ValueError,
        "uses a Bernoulli likelihood and expects binary images",
    ),
    "noise_wrong_count": (
        "tiny",
        lambda m: m(tiny_images(2), noise=fixed_noise(m, 2)[:2]),
        ValueError,
        r"`noise` must be a list of 4 tensors \(one per latent group, decoder order\), got 2",
    ),
    "noise_wrong_shape": (
        "tiny",
        lambda m: m.sample(2, noise=fixed_noise(m, 3)),
        ValueError,
        r"noise\[0\] must have shape \(batch, 4, 4, 4\), got \(3, 4, 4, 4\)",
    ),
    "latents_wrong_shape": (
        "tiny",
        lambda m: m.decode([np.zeros((1, 3, 3, 4), "float32")] * 4),
        ValueError,
        r"noise\[0\] must have shape \(batch, 4, 4, 4\), got \(1, 3, 3, 4\)",
    ),
    "temperature_zero": (
        "tiny",
        lambda m: m.sample(2, temperature=0.0),
        ValueError,
        r"`temperature` values must be finite floats > 0, got 0\.0",
    ),
    "temperature_negative_in_list": (
        "tiny",
        lambda m: m.reconstruct(tiny_images(1), num_posterior_groups=1,
                                temperature=[1.0, 1.0, -0.5, 1.0]),
        ValueError,
        "`temperature` values must be finite floats > 0",
    ),
    "temperature_list_wrong_length": (
        "tiny",
        lambda m: m.sample(2, temperature=[0.7, 0.7]),
        ValueError,
        r"`temperature` must be a float or a list of 4 floats",
    ),
    "num_samples_zero": (
        "tiny",
        lambda m: m.sample(0),
        ValueError,
        r"`num_samples` must be a positive int, got 0",
    ),
    "num_samples_float": (
        "tiny",
        lambda m: m.sample(2.0),
        ValueError,
        r"`num_samples` must be a positive int, got 2\.0",
    ),
    "log_likelihood_num_samples_zero": (
        "tiny",
        lambda m: m.log_likelihood(tiny_images(2), num_samples=0),
        ValueError,
        r"`num_samples` must be a positive int, got 0",
    ),
    "num_posterior_groups_too_large": (
        "tiny",
        lambda m: m.reconstruct(tiny_images(1), num_posterior_groups=5),
        ValueError,
        r"`num_posterior_groups` must be an int in \[0, 4\]",
    ),
    "interpolation_one_step": (
        "tiny",
        lambda m: m.interpolate(tiny_images(1), tiny_images(1, seed=1), num_steps=1),
        ValueError,
        r"`num_steps` must be an int >= 2",
    ),
    "seed_negative": (
        "tiny",
        lambda m: m.sample(2, seed=-1),
        ValueError,
        r"`seed` must be None, an int in \[0, 2\*\*31\)",
    ),
    # Checked before the noise is drawn: the seed generator does not advance.
    "unknown_output": (
        "tiny",
        lambda m: m.sample(2, output="median"),
        ValueError,
        r"`output` must be 'mean' or 'sample' .*got 'median'",
    ),
    "fit_empty_array": (
        "trainable",
        lambda m: m.fit(np.zeros((0, 16, 16, 3), "uint8"), verbose=0),
        ValueError,
        r"NVAE.fit: `x` is an empty array of shape \(0, 16, 16, 3\): there are no images",
    ),
    "fit_empty_dataset": (
        "trainable",
        lambda m: m.fit(_batches(np.zeros((0, 16, 16, 3), "uint8")), verbose=0),
        ValueError,
        r"NVAE.fit: `x` is an empty tf.data.Dataset \(cardinality 0\)",
    ),
    "fit_empty_validation_dataset": (
        "trainable",
        lambda m: m.fit(
            _batches(tiny_images(4)), validation_data=_batches(tiny_images(3)).skip(1), verbose=0
        ),
        ValueError,
        r"NVAE.fit: `validation_data` is an empty tf.data.Dataset \(cardinality 0\)",
    ),
    "fit_unbatched_dataset": (
        "trainable",
        lambda m: m.fit(tf.data.Dataset.from_tensor_slices(tiny_images(4)), verbose=0),
        ValueError,
        SHAPE + r"\(16, 16, 3\)",
    ),
    "fit_int32_array": (
        "trainable",
        lambda m: m.fit(tiny_images(4).astype("int32"), batch_size=2, verbose=0),
        ValueError,
        DTYPE + "int32",
    ),
    "fit_dict_dataset_without_images": (
        "trainable",
        lambda m: m.fit(_batches({"pixels": tiny_images(4)}), verbose=0),
        ValueError,
        r"NVAE datasets that yield dicts must have an 'image' key, got keys \['pixels'\]",
    ),
}


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_model_call_rejects_bad_input(request, case):
    fixture, call, error, message = MODEL_CASES[case]
    model = request.getfixturevalue(fixture)
    before = model_state(model)
    with pytest.raises(error, match=message):
        call(model)
    assert_state_unchanged(model, before)


@pytest.mark.slow  # ~40 s: a process of its own
def test_fit_batch_smaller_than_the_replica_count():
    # Two replicas need two logical CPUs, configured before TensorFlow starts: another process.
    script = os.path.join(os.path.dirname(__file__), "scripts", "replica_batch.py")
    result = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    values = json.loads(result.stdout.strip().splitlines()[-1])
    assert values["replicas"] == 2
    repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert values["library"].startswith(repository), values["library"]
    expected = (
        r"NVAE.fit: `(x|validation_data)` gives a batch of 1 image\(s\) to split over 2 "
        r"replicas, leaving a replica without images"
    )
    for case, message in values["messages"].items():
        assert message is not None and re.search(expected, message), (case, message)
    assert values["state_error"] is None, values["state_error"]


def test_state_comparison_sees_the_seed_generator(tiny):
    # The helper must see a change of the noise seed stream (the kind of state a call that draws
    # noise before failing would change); drawing noise advances it.
    before = model_state(tiny)
    tiny.sample(1)
    with pytest.raises(AssertionError, match="seed_generator_state"):
        assert_state_unchanged(tiny, before)


# ------------------------------------------------------------- presets and configuration
CONFIG_CASES = {
    "unknown_preset": (
        lambda: NVAE.from_preset("cifar100"),
        r"Unknown NVAE preset 'cifar100'. Known presets: .*cifar10",
    ),
    "invalid_override": (
        lambda: NVAE.from_preset("tiny", num_channels_enc=0),
        r"NVAEConfig.num_channels_enc must be an integer >= 1, got 0",
    ),
    "invalid_choice_override": (
        lambda: NVAE.from_preset("tiny", likelihood="gaussian"),
        r"NVAEConfig.likelihood must be one of \[.*'dmol'.*\], got 'gaussian'",
    ),
    "unknown_override": (
        lambda: NVAE.from_preset("tiny", num_channel_enc=8),
        r"Unknown NVAEConfig field\(s\) \['num_channel_enc'\]",
    ),
    "unknown_command_line_override": (
        lambda: config_lib.parse_overrides(["num_channel_enc=8"]),
        r"unknown NVAEConfig field 'num_channel_enc'. Close matches: num_channels_enc",
    ),
    "override_without_value": (
        lambda: config_lib.parse_overrides(["num_channels_enc"]),
        r"An override expects key=value",
    ),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_configuration_rejects_bad_input(case):
    call, message = CONFIG_CASES[case]
    with pytest.raises(ValueError, match=message):
        call()


# -------------------------------------------------------------------------- weights
def test_weights_of_another_configuration(tiny, bernoulli, tmp_path):
    # Both models share every tensor but the output convolution (its channels depend on the
    # likelihood): Keras assigns the others before it fails on that one; nothing may stay.
    path = str(tmp_path / "tiny.weights.h5")
    tiny.save_weights(path)
    before = model_state(bernoulli)
    with pytest.raises(ValueError, match=r"do not fit this NVAE .* This model is unchanged"):
        bernoulli.load_weights(path)
    assert_state_unchanged(bernoulli, before)


def test_official_state_dict_of_another_configuration(tiny):
    before = model_state(tiny)
    with pytest.raises(
        convert.OfficialCheckpointError, match="does not match this NVAE configuration"
    ):
        convert.load_official_state_dict(tiny, Reference("mnist").state_dict)
    assert_state_unchanged(tiny, before)


# ----------------------------------------------------------------------------- files
class _CreatesFile:
    """Unpickles as `open(path, "w")`: a pickle that would run code (create `path`)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _truncate(path):
    with open(path, "rb") as file:
        content = file.read()
    with open(path, "wb") as file:
        file.write(content[: len(content) // 2])


def _keras_file(directory, model, kind):
    """A .keras file of the given kind; `model` is saved for the archive kinds."""
    path = str(directory / f"{kind}.keras")
    if kind == "not_a_zip":
        with open(path, "wb") as file:
            file.write(b"not a zip file")
    elif kind == "sequential":
        keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]).save(path)
    elif kind == "lambda":
        keras.Sequential([keras.Input((2,)), keras.layers.Lambda(lambda x: x + 1)]).save(path)
    else:
        model.save(path)
    if kind == "truncated":
        _truncate(path)
    elif kind == "damaged":
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("model.weights.h5")
        with open(path, "r+b") as file:  # Flip bytes inside the weights member.
            file.seek(info.header_offset + len(info.filename) + 30 + info.compress_size // 2)
            file.write(b"\xff" * 64)
    return path


KERAS_CASES = {
    "missing": (FileNotFoundError, r"No model file at '.*missing.keras'"),
    "truncated": (loading.ModelFileError, r"is not a complete .keras archive .*truncated"),
    "not_a_zip": (loading.ModelFileError, r"is not a complete .keras archive \(a zip file\)"),
    "damaged": (
        loading.ModelFileError,
        r"is a damaged .keras archive \(model.weights.h5 does not read back\)",
    ),
    "sequential": (loading.ModelFileError, r"holds a Sequential, not a keras_nvae NVAE"),
    "lambda": (loading.ModelFileError, r"Keras could not load .*\(ValueError: .*`Lambda` layer"),
}


@pytest.mark.parametrize("kind", sorted(KERAS_CASES))
def test_keras_file(tmp_path, tiny, kind):
    error, message = KERAS_CASES[kind]
    path = (
        str(tmp_path / "missing.keras")
        if kind == "missing"
        else _keras_file(tmp_path, tiny, kind)
    )
    with pytest.raises(error, match=message):
        loading.load_model(path)


def _saved_model(directory, truncate=None):
    """A SavedModel of a module with one variable; `truncate` names a file to cut in half."""
    module = tf.Module()
    module.scale = tf.Variable(np.arange(4096, dtype="float32"))
    module.sample = tf.function(lambda: module.scale * 2.0, input_signature=[])
    path = str(directory / "saved")
    tf.saved_model.save(module, path)
    if truncate is not None:
        _truncate(f"{path}/{truncate}")
    return path


SAVED_MODEL_CASES = {
    "truncated_graph": (
        "saved_model.pb",
        r"The SavedModel in '.*saved' could not be read \(.*\): its files are truncated",
    ),
    "truncated_variables": (
        "variables/variables.data-00000-of-00001",
        r"The SavedModel in '.*saved' could not be read \(.*\): its files are truncated",
    ),
    "not_an_nvae_export": (
        None,
        r"has no sample_seeded, reconstruct, reconstruct_seeded, encode, log_likelihood "
        r"endpoint\(s\): it was not written by NVAE.export",
    ),
}


@pytest.mark.parametrize("case", sorted(SAVED_MODEL_CASES))
def test_saved_model_file(tmp_path, case):
    truncate, message = SAVED_MODEL_CASES[case]
    with pytest.raises(loading.ModelFileError, match=message):
        loading.load_saved_model(_saved_model(tmp_path, truncate))


class _WritesWhenInitialized(tf.saved_model.experimental.TrackableResource):
    """A resource whose initializer (a graph function saved in the SavedModel) writes a file."""

    def __init__(self, path):
        super().__init__()
        self.path = str(path)

    def _create_resource(self):
        return tf.raw_ops.HashTableV2(key_dtype=tf.string, value_dtype=tf.int64)

    def _initialize(self):
        return tf.io.write_file(self.path, "written by a graph function of the file")


def test_loading_a_saved_model_runs_its_graph_functions(tmp_path):
    # What the README says: a SavedModel is a program; loading one runs its resource
    # initializers, graph functions from the file, which can write files.
    marker = tmp_path / "written_while_loading"
    module = tf.Module()
    module.resource = _WritesWhenInitialized(marker)
    tf.saved_model.save(module, str(tmp_path / "saved"))
    assert not marker.exists()
    with pytest.raises(loading.ModelFileError, match="it was not written by NVAE.export"):
        loading.load_saved_model(str(tmp_path / "saved"))
    assert marker.exists()


def test_missing_saved_model(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No SavedModel \(saved_model.pb\) in"):
        loading.load_saved_model(str(tmp_path))


def test_pt_file_that_is_not_an_nvae_checkpoint(tmp_path):
    import torch

    path = str(tmp_path / "classifier.pt")
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}, "epoch": 3}, path)
    with pytest.raises(
        convert.OfficialCheckpointError,
        match=r"holds a dict with keys \['epoch', 'model'\], without \['args', 'state_dict'\]",
    ):
        convert.load_official_checkpoint(path)


def test_crafted_pt_file_runs_no_code(tmp_path):
    import torch

    marker = tmp_path / "created_by_the_checkpoint"
    path = str(tmp_path / "crafted.pt")
    torch.save({"args": argparse.Namespace(), "state_dict": {}, "x": _CreatesFile(marker)}, path)
    with pytest.raises(
        convert.OfficialCheckpointError, match=r"Refused to load .*: it references io\.open"
    ):
        convert.load_official_checkpoint(path)
    assert not marker.exists()


def test_corrupt_npz_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(b"PK\x03\x04 not a zip archive")
    with pytest.raises(convert.OfficialCheckpointError, match=r"is not a readable .npz file"):
        convert.load_official_checkpoint(str(path))


# ------------------------------------------------------------------------------ data
def test_missing_tfds_data_offline(tmp_path):
    with pytest.raises(
        data.DatasetNotAvailableError,
        match=r"(?s)dataset 'mnist' is not prepared in data_dir .*run `tfds build mnist",
    ):
        data.load_tfds("mnist", "train", batch_size=8, data_dir=str(tmp_path))


def _image_bytes(kind):
    encode = tf.io.encode_png if kind == "png" else tf.io.encode_jpeg
    return encode(tiny_images(1)[0]).numpy()


def _corrupt_inside_jpeg():
    """A JPEG with its signature and end marker intact and garbage in between."""
    image = np.random.RandomState(0).randint(0, 256, (64, 64, 3)).astype(np.uint8)
    jpeg = tf.io.encode_jpeg(image).numpy()
    third = len(jpeg) // 3
    garbage = np.random.RandomState(1).randint(0, 256, third).astype(np.uint8).tobytes()
    return jpeg[:third] + garbage + jpeg[2 * third :]


def test_bad_image_files_are_named_when_the_folder_dataset_is_created(tmp_path):
    (tmp_path / "a.png").write_bytes(_image_bytes("png"))
    (tmp_path / "b.jpg").write_bytes(_image_bytes("jpeg")[:200])
    (tmp_path / "c.png").write_bytes(_image_bytes("png")[:60])
    (tmp_path / "d.jpeg").write_bytes(b"<html>not found</html>")
    (tmp_path / "e.png").write_bytes(b"")
    with pytest.raises(data.BadImageFileError) as error:
        data.make_dataset(str(tmp_path), image_size=16, batch_size=3, shuffle=False)
    message = str(error.value)
    assert message.startswith("4 of 5 image files cannot be used: ")
    for name, problem in [
        ("b.jpg", "truncated JPEG: no end-of-image marker"),
        ("c.png", "truncated PNG: no IEND chunk at its end"),
        ("d.jpeg", "not a PNG or JPEG: it starts with b'<htm'"),
        ("e.png", "empty file"),
    ]:
        assert f"{tmp_path / name} ({problem})" in message
    assert "skip_bad_images=True" in message
    assert [path for path, _ in error.value.problems] == [
        str(tmp_path / name) for name in ("b.jpg", "c.png", "d.jpeg", "e.png")
    ]
    with pytest.warns(UserWarning, match=r"Skipping 4 of 5 image files under .*b\.jpg"):
        dataset = data.make_dataset(
            str(tmp_path), image_size=16, batch_size=3, shuffle=False, skip_bad_images=True
        )
    np.testing.assert_array_equal(np.concatenate(list(dataset)), tiny_images(1))
    (tmp_path / "a.png").write_bytes(b"GIF89a")
    with pytest.raises(data.BadImageFileError, match=r"5 of 5 image files"):
        data.load_image_folder(str(tmp_path), 16, skip_bad_images=True)


def test_an_unreadable_image_file_is_named_with_one_line_of_its_error(tmp_path):
    path = str(tmp_path / "gone.png")
    assert data.image_files.file_problem(path) == f"unreadable: {path}; No such file or directory"


def test_image_corrupt_inside_names_the_file_at_its_batch_or_is_skipped(tmp_path):
    good = _image_bytes("png")
    (tmp_path / "a.png").write_bytes(good)
    (tmp_path / "b.jpg").write_bytes(_corrupt_inside_jpeg())
    (tmp_path / "c.png").write_bytes(good)
    dataset = data.load_image_folder(str(tmp_path), image_size=16, batch_size=3, shuffle=False)
    assert int(dataset.cardinality()) == 1  # The size stays known (fit's schedules use it).
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"keras_nvae cannot decode the image file .*b\.jpg \(corrupt inside: its start "
        r"and end look complete but it cannot be decoded\)\.",
    ) as error:
        list(dataset)
    assert data.image_files.decode_error(error.value).problems[0][0] == str(tmp_path / "b.jpg")
    assert data.image_files.decode_error(tf.errors.InvalidArgumentError(None, None, "x")) is None
    skipping = data.load_image_folder(str(tmp_path), 16, batch_size=3, skip_bad_images=True)
    with pytest.warns(UserWarning, match=r"Skipping the image file .*b\.jpg .*; 1 image file "):
        images = np.concatenate(list(skipping))
    np.testing.assert_array_equal(images, np.stack([tiny_images(1)[0]] * 2))
    (tmp_path / "b.jpg").write_bytes(good)
    images = next(iter(data.load_image_folder(str(tmp_path), 16, batch_size=3, shuffle=False)))
    np.testing.assert_array_equal(images, np.stack([tiny_images(1)[0]] * 3))


def test_npz_with_wrong_dtype_names_the_file_the_array_and_the_dtype(tmp_path):
    path = tmp_path / "faces.npz"
    np.savez(path, train=tiny_images(2).astype(np.int64), test=tiny_images(2))
    with pytest.raises(
        ValueError,
        match=r"The array 'train' in '.*faces\.npz' \(dtype int64, shape \(2, 16, 16, 3\)\) "
        r"cannot be used as images: Images must be uint8 in \[0, 255\] or floating-point in "
        r"\[0, 1\]; got dtype int64\. .*astype\(np\.uint8\)",
    ):
        data.make_dataset(str(path), "train", batch_size=2)
    np.savez(path, train=np.zeros((2, 3, 16, 16), np.uint8))
    with pytest.raises(ValueError, match=r"The array 'train' in '.*faces\.npz'.*channels-first"):
        data.make_dataset(str(path), "train", batch_size=2)
