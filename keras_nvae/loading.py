"""Loading NVAE files written elsewhere, with errors that say what is wrong.

`load_model` reads a `.keras` archive in Keras' safe mode: a file whose
configuration holds Python code (a `Lambda` layer, for instance) is refused,
so reading one runs no code from it. `load_saved_model` reads a SavedModel
written by `NVAE.export`. A SavedModel is a TensorFlow program: its
endpoints run whatever graph ops the file holds, file reads and writes
included, so load only SavedModels you trust.
"""

import os
import zipfile

import keras
import tensorflow as tf

from keras_nvae.errors import first_line
from keras_nvae.model import NVAE

SAVED_MODEL_ENDPOINTS = (
    "sample",
    "sample_seeded",
    "reconstruct",
    "reconstruct_seeded",
    "encode",
    "log_likelihood",
)


class ModelFileError(ValueError):
    """A file that is not a complete, loadable keras_nvae model."""


def _check_archive(path):
    """Raise `ModelFileError` unless `path` is a zip archive whose members all read back."""
    with tf.io.gfile.GFile(path, "rb") as file:
        try:
            complete = zipfile.is_zipfile(file)
        except tf.errors.OpError:  # GFile's error where a local file raises OSError (short files)
            complete = False
        if not complete:
            raise ModelFileError(
                f"{path!r} is not a complete .keras archive (a zip file): it is "
                "truncated, or was not written by model.save(). Copy or save it again."
            )
        try:
            with zipfile.ZipFile(file) as archive:
                damaged = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, tf.errors.OpError) as error:
            damaged = first_line(error)
    if damaged is not None:
        raise ModelFileError(
            f"{path!r} is a damaged .keras archive ({damaged} does not read back). "
            "Copy or save it again."
        )


def load_model(path):
    """Load an `NVAE` saved with `model.save(path)`, in Keras' safe mode.

    Args:
        path: a `.keras` file (local or any `tf.io.gfile` path).

    Returns:
        The `keras_nvae.NVAE`.

    Raises:
        FileNotFoundError: no file at `path`.
        ModelFileError: a truncated or damaged archive, one Keras cannot load
            (a configuration holding code is refused by its safe mode), or a
            model that is not an NVAE.

    Example:
    ```python
    model = keras_nvae.loading.load_model("nvae.keras")
    ```
    """
    path = os.fspath(path)
    if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
        raise FileNotFoundError(f"No model file at {path!r}.")
    _check_archive(path)
    try:
        model = keras.saving.load_model(path, safe_mode=True)
    except Exception as error:  # Keras raises many types for what a file can hold.
        raise ModelFileError(
            f"Keras could not load {path!r} ({first_line(error)}). Is it a .keras "
            "file written by keras_nvae?"
        ) from error
    if not isinstance(model, NVAE):
        raise ModelFileError(f"{path!r} holds a {type(model).__name__}, not a keras_nvae NVAE.")
    return model


def load_saved_model(path):
    """Load a SavedModel written by `NVAE.export` (only from a source you trust).

    Args:
        path: the SavedModel directory.

    Returns:
        The loaded object, with the `sample`, `reconstruct`, `encode` and
        `log_likelihood` endpoints (see `keras_nvae.export`).

    Raises:
        FileNotFoundError: no `saved_model.pb` in `path`.
        ModelFileError: truncated or damaged files, or a SavedModel without
            the NVAE endpoints.

    Example:
    ```python
    served = keras_nvae.loading.load_saved_model("nvae_savedmodel")
    images = served.sample(num_samples=4, temperature=0.7)["images"]
    ```
    """
    path = os.fspath(path)
    if not tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        raise FileNotFoundError(f"No SavedModel (saved_model.pb) in {path!r}.")
    try:
        served = tf.saved_model.load(path)
    except Exception as error:  # DecodeError, DataLossError, NotFoundError, ValueError, ...
        raise ModelFileError(
            f"The SavedModel in {path!r} could not be read ({first_line(error)}): its "
            "files are truncated or damaged. Copy or export it again."
        ) from error
    missing = [name for name in SAVED_MODEL_ENDPOINTS if not hasattr(served, name)]
    if missing:
        raise ModelFileError(
            f"The SavedModel in {path!r} has no {', '.join(missing)} endpoint(s): it "
            "was not written by NVAE.export."
        )
    return served
