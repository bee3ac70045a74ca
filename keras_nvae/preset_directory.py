"""Preset directories: an NVAE on disk as `config.json`, `model.weights.h5` and `metadata.json`.

A preset directory is what `NVAE.save_to_preset` writes and `NVAE.from_preset`
reads, the layout keras-hub uses for its presets:

- `config.json`: `{"library": "keras_nvae", "class_name": "NVAE",
  "format_version": 1, "config": {<NVAEConfig fields>}}`.
- `model.weights.h5`: the weights (Keras `save_weights`).
- `metadata.json`: description, trainable parameters, library, Keras and
  TensorFlow versions, and where the weights come from.
- `training_state/` (only when asked for): the variables of the model and
  its optimizer, as the resumable trainer saves them
  (`keras_nvae.training.checkpoint_store.CheckpointStore`); `load_training_state` puts
  them back into a compiled model.

Reading a preset runs no code from it: the configuration is JSON that only
sets `NVAEConfig` fields (no class or module named in it is imported) and the
weights are HDF5 arrays.
"""

import collections
import json
import os

import h5py
import keras
import numpy as np
import tensorflow as tf

from keras_nvae import errors
from keras_nvae.training import atomic_files
from keras_nvae.training import checkpoint_store
from keras_nvae.training import checkpointing
from keras_nvae.config import NVAEConfig
from keras_nvae.loading import ModelFileError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
TRAINING_STATE_DIR = "training_state"
LIBRARY = "keras_nvae"
CLASS_NAME = "NVAE"
FORMAT_VERSION = 1
# The group Keras' `save_weights` gives a compiled model's optimizer in the weights file.
_OPTIMIZER_GROUP = "optimizer"


def is_preset_directory(preset):
    """Whether `from_preset(preset)` reads a directory: an existing path or one with a
    separator (a built-in preset name is checked first; `./tiny` names a directory `tiny`)."""
    path = os.fspath(preset)
    separators = [os.sep] + ([os.altsep] if os.altsep else [])
    return os.path.exists(path) or any(separator in path for separator in separators)


# ---------------------------------------------------------------------------- saving
def _metadata(model, description, source, include_training_state):
    import keras_nvae

    return {
        "description": description or "An NVAE saved with NVAE.save_to_preset.",
        "trainable_parameters": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        "library": LIBRARY,
        "library_version": keras_nvae.__version__,
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
        "source": source or "saved with NVAE.save_to_preset",
        "training_state": include_training_state,
    }


def _training_checkpoint(preset_dir):
    """The trainer's checkpoint callback, saving to and restoring from the preset's state."""
    store = checkpoint_store.CheckpointStore(os.path.join(preset_dir, TRAINING_STATE_DIR), keep=1)
    return checkpointing.TrainingCheckpoint(store, steps_per_epoch=1, every_n_steps=1)


def _build_optimizer(model, what):
    """Build `model`'s optimizer if it is not yet; raises `ValueError` when it has none."""
    if getattr(model, "optimizer", None) is None:
        raise ValueError(
            f"{what} needs the model's optimizer: call model.compile(total_steps=...) first."
        )
    with model.distribute_strategy.scope():
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)


def save_preset(model, preset_dir, description=None, source=None, include_training_state=False):
    """Write `model` as a preset directory (see the module docstring).

    Every file is written under a temporary name and renamed, so a kill never
    leaves a truncated file behind.

    Args:
        model: a `keras_nvae.NVAE`.
        preset_dir: the directory (created if missing; the files are replaced).
        description: one line for `metadata.json`.
        source: where the weights come from, for `metadata.json` (e.g.
            "converted from the official checkpoint eval-cifar10/checkpoint.pt").
        include_training_state: also save the optimizer's variables, the step
            counters and the noise seed state in `training_state/`; the model
            must be compiled with an optimizer (`compile(total_steps=...)`).

    Returns:
        `preset_dir`.

    Raises:
        ValueError: `include_training_state` without an optimizer.
    """
    preset_dir = os.fspath(preset_dir)
    if include_training_state:
        _build_optimizer(model, "save_to_preset(include_training_state=True)")
    os.makedirs(preset_dir, exist_ok=True)
    with atomic_files.atomic_path(os.path.join(preset_dir, WEIGHTS_FILE)) as temporary:
        model.save_weights(temporary)
    config = {
        "library": LIBRARY,
        "class_name": CLASS_NAME,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
    }
    atomic_files.write_json(os.path.join(preset_dir, CONFIG_FILE), config)
    checkpoint = _training_checkpoint(preset_dir)
    checkpoint.store.clear()
    if include_training_state:
        checkpoint.set_model(model)
        checkpoint.save()
    metadata = _metadata(model, description, source, include_training_state)
    atomic_files.write_json(os.path.join(preset_dir, METADATA_FILE), metadata)
    return preset_dir


# --------------------------------------------------------------------------- reading
def _existing_file(preset_dir, name):
    """The path of `name` in the preset; raises `ModelFileError` when it is missing."""
    path = os.path.join(preset_dir, name)
    if not os.path.isfile(path):
        raise ModelFileError(
            f"The preset directory {preset_dir!r} has no {name}; a preset holds {CONFIG_FILE}, "
            f"{WEIGHTS_FILE} and {METADATA_FILE} (written by NVAE.save_to_preset)."
        )
    return path


def _read_json(preset_dir, name):
    path = _existing_file(preset_dir, name)
    try:
        with open(path, encoding="utf-8") as file:
            value = json.load(file)
    except (ValueError, UnicodeDecodeError) as error:
        raise ModelFileError(
            f"{path!r} is not valid JSON ({type(error).__name__}: {error}): it is truncated "
            "or damaged. Copy or save the preset again."
        ) from error
    if not isinstance(value, dict):
        raise ModelFileError(f"{path!r} holds a JSON {type(value).__name__}, not an object.")
    return value


def read_config(preset_dir):
    """The `NVAEConfig` in a preset's `config.json`.

    Raises:
        ModelFileError: a missing, truncated or foreign `config.json` (another
            library's or class's), or one whose fields are not a valid
            `NVAEConfig`.
    """
    content = _read_json(preset_dir, CONFIG_FILE)
    library, class_name = content.get("library"), content.get("class_name")
    if library != LIBRARY or class_name != CLASS_NAME:
        owner = content.get("module", library)
        raise ModelFileError(
            f"{os.path.join(preset_dir, CONFIG_FILE)!r} holds the configuration of "
            f"{class_name!r} from {owner!r}, not of a keras_nvae NVAE: this is not a "
            "keras_nvae preset."
        )
    if content.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"The preset in {preset_dir!r} has format_version "
            f"{content.get('format_version')!r}; this keras_nvae reads version {FORMAT_VERSION}."
        )
    fields = content.get("config")
    if not isinstance(fields, dict):
        raise ModelFileError(f"{os.path.join(preset_dir, CONFIG_FILE)!r} has no \"config\" object.")
    try:
        return NVAEConfig.from_dict(fields)
    except (TypeError, ValueError) as error:
        raise ModelFileError(
            f"The configuration in {os.path.join(preset_dir, CONFIG_FILE)!r} is not a valid "
            f"NVAEConfig: {error}"
        ) from error


def read_metadata(preset_dir):
    """The preset's `metadata.json` as a dict (raises `ModelFileError` like `read_config`)."""
    return _read_json(preset_dir, METADATA_FILE)


def _saved_weight_shapes(preset_dir):
    """The shapes of the arrays in the preset's weights file, optimizer arrays excepted.

    Returns:
        A `collections.Counter` of shape tuples.
    """
    path = _existing_file(preset_dir, WEIGHTS_FILE)
    shapes = collections.Counter()

    def visit(name, item):
        if isinstance(item, h5py.Dataset) and name.split("/")[0] != _OPTIMIZER_GROUP:
            shapes[tuple(item.shape)] += 1

    try:
        with h5py.File(path, "r") as file:
            file.visititems(visit)
    except (OSError, KeyError, RuntimeError) as error:
        raise ModelFileError(
            f"{path!r} is not a readable HDF5 weights file ({errors.first_line(error)}): "
            "it is truncated, damaged or "
            "another kind of file. Copy or save the preset again."
        ) from error
    return shapes


def _weight_shapes(model):
    return collections.Counter(tuple(weight.shape) for weight in model.weights)


def _fields_that_change_shapes(cls, config, overrides, saved):
    """The overridden fields whose change alone gives weights of other shapes than `saved`."""
    changing = []
    for name, value in overrides.items():
        try:
            single = config.replace(**{name: value})
        except ValueError:
            continue  # Valid only together with the other overrides.
        if single != config and _weight_shapes(cls(single)) != saved:
            changing.append(name)
    return changing or sorted(overrides)


def _check_weights_fit(cls, model, preset_dir, config, overrides, saved):
    if _weight_shapes(model) == saved:
        return
    if not overrides:
        raise ModelFileError(
            f"{os.path.join(preset_dir, WEIGHTS_FILE)!r} does not hold the weights of the "
            f"configuration in {CONFIG_FILE} (its arrays have other shapes or count): the files "
            "come from different models. Copy or save the preset again."
        )
    fields = _fields_that_change_shapes(cls, config, overrides, saved)
    raise ValueError(
        f"Overriding {', '.join(fields)} changes the shapes of the NVAE's weights, so "
        f"the weights of the preset {preset_dir!r} cannot be loaded with them. Only fields "
        "that keep every weight's shape can be overridden (e.g. remat, official_dmol, "
        "num_x_bits and the training settings); build NVAE(config) to train a new model."
    )


def load_preset(cls, preset_dir, **overrides):
    """Build an NVAE from a preset directory, with `NVAEConfig` overrides.

    Args:
        cls: the model class (`keras_nvae.NVAE`).
        preset_dir: a directory written by `save_preset`.
        **overrides: `NVAEConfig` fields to change; only fields that keep the
            shapes of every weight.

    Returns:
        The model, with the preset's weights.

    Raises:
        FileNotFoundError: no directory at `preset_dir`.
        ModelFileError: a missing, truncated, damaged or foreign file.
        ValueError: an invalid override, or one that changes weight shapes
            (the message names the field).
    """
    preset_dir = os.fspath(preset_dir)
    if not os.path.isdir(preset_dir):
        raise FileNotFoundError(f"No preset directory at {preset_dir!r}.")
    config = read_config(preset_dir)
    read_metadata(preset_dir)
    saved = _saved_weight_shapes(preset_dir)
    model = cls(config.replace(**overrides))
    _check_weights_fit(cls, model, preset_dir, config, overrides, saved)
    try:
        model.load_weights(os.path.join(preset_dir, WEIGHTS_FILE))
    except (OSError, ValueError) as error:
        raise ModelFileError(
            f"The weights of the preset {preset_dir!r} could not be loaded ({error})."
        ) from error
    return model


def load_training_state(model, preset_dir):
    """Put the training state saved with a preset back into `model`.

    The model's optimizer is built if it is not yet; afterwards every
    variable of the model and the optimizer (weights, step counters, noise
    seed state, optimizer slots) is as it was when the preset was saved.

    Args:
        model: the `NVAE` loaded from the preset, compiled with `total_steps`
            (or with an optimizer), the optimizer it was saved with.
        preset_dir: a preset saved with `include_training_state=True`.

    Raises:
        ModelFileError: the preset has no training state.
        ValueError: the model is not compiled with an optimizer.
        keras_nvae.training.checkpoint_store.CheckpointError: the saved state is damaged
            or belongs to another model or optimizer.

    Example:
    ```python
    model = keras_nvae.NVAE.from_preset("my_preset")
    model.compile(total_steps=10_000)
    keras_nvae.preset_directory.load_training_state(model, "my_preset")
    ```
    """
    preset_dir = os.fspath(preset_dir)
    checkpoint = _training_checkpoint(preset_dir)
    if not checkpoint.store.steps():
        raise ModelFileError(
            f"The preset {preset_dir!r} has no training state; save it with "
            "save_to_preset(..., include_training_state=True)."
        )
    _build_optimizer(model, "load_training_state")
    checkpoint.set_model(model)
    checkpoint.restore()
