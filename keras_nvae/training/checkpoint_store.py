"""The saved training states of one run: `state-<step>.npz` + `.json` pairs in a folder.

A save is two files, `state-<step>.npz` (the arrays) and `state-<step>.json`
(position, history and the arrays' SHA-256), the JSON written last; the last
two saves are kept. Loading takes the newest intact save.
"""

import contextlib
import errno
import hashlib
import json
import os
import warnings

import numpy as np

from keras_nvae.training.atomic_files import atomic_write
from keras_nvae.training.atomic_files import write_json

FORMAT_VERSION = 1
STATE_PREFIX = "state-"


class CheckpointError(RuntimeError):
    """Saved training state that cannot be used (no intact save, another model).

    About keras_nvae's own saves (`CheckpointStore`); a foreign file from the
    official code raises `keras_nvae.convert.OfficialCheckpointError` instead.
    """


class CheckpointWriteError(OSError):
    """A save failed (directory not writable, disk full); the previous save is intact."""


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_arrays(file, arrays):
    np.savez(file, **{f"a{index:05d}": value for index, value in enumerate(arrays)})


def write_failure(what, directory, error):
    """The `CheckpointWriteError` of an `OSError` raised while writing `what` in `directory`:
    what went wrong and what to do."""
    if isinstance(error, PermissionError):
        problem, remedy = "permission denied", f"make {directory} writable"
    elif error.errno == errno.ENOSPC:
        problem, remedy = "the disk is full", "free disk space"
    else:
        problem, remedy = f"{type(error).__name__}: {error}", "fix the problem"
    return CheckpointWriteError(
        error.errno,
        f"could not save {what} in {directory} ({problem}). Training stopped; "
        f"{remedy} or pass another --output_dir, then run the same command again: it "
        "resumes from the previous save, which is intact.",
    )


class CheckpointStore:
    """The saves of one run in a folder: write, list, load the newest intact one.

    Args:
        directory: the folder (created on the first save).
        keep: how many saves to keep (older ones are deleted after a save).

    Example:
    ```python
    store = CheckpointStore("runs/x/checkpoints")
    store.save([np.zeros(3)], {"step": 10})
    arrays, info = store.load_latest()
    ```
    """

    def __init__(self, directory, keep=2):
        self.directory = directory
        self.keep = keep

    def _paths(self, step):
        stem = os.path.join(self.directory, f"{STATE_PREFIX}{step:010d}")
        return stem + ".npz", stem + ".json"

    def steps(self):
        """Steps of the committed saves (those with a JSON file), oldest first."""
        if not os.path.isdir(self.directory):
            return []
        steps = []
        for name in os.listdir(self.directory):
            stem, extension = os.path.splitext(name)
            number = stem[len(STATE_PREFIX):]
            if stem.startswith(STATE_PREFIX) and extension == ".json" and number.isdigit():
                steps.append(int(number))
        return sorted(steps)

    def save(self, step, arrays, info):
        """Write one save: the arrays, then the JSON that commits them.

        Args:
            step: the global step (names the files).
            arrays: list of numpy arrays.
            info: JSON-serialisable dict stored with them.

        Raises:
            CheckpointWriteError: the files could not be written; the
                previous saves are untouched.
        """
        data_path, info_path = self._paths(step)
        try:
            os.makedirs(self.directory, exist_ok=True)
            with atomic_write(data_path) as file:
                _write_arrays(file, arrays)
            info = dict(info, format=FORMAT_VERSION, step=step, sha256=_sha256(data_path))
            write_json(info_path, info)
        except OSError as error:
            raise write_failure("the training state", self.directory, error) from error
        self._prune()

    def _prune(self):
        committed = self.steps()
        for step in committed[: -self.keep]:
            self._remove(step)
        keep = {os.path.basename(path) for step in committed for path in self._paths(step)}
        for name in os.listdir(self.directory):
            if name.startswith(STATE_PREFIX) and name not in keep:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(self.directory, name))

    def _remove(self, step):
        for path in reversed(self._paths(step)):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)

    def _load(self, step):
        data_path, info_path = self._paths(step)
        try:
            with open(info_path) as file:
                info = json.load(file)
            if info.get("format") != FORMAT_VERSION:
                return None, f"it has format {info.get('format')!r}, not {FORMAT_VERSION}"
            if _sha256(data_path) != info["sha256"]:
                return None, "its data file does not match its checksum (truncated or corrupt)"
            with np.load(data_path, allow_pickle=False) as data:
                arrays = [data[f"a{index:05d}"] for index in range(len(data.files))]
        except (OSError, ValueError, KeyError, TypeError) as error:
            return None, f"it cannot be read ({type(error).__name__}: {error})"
        return (arrays, info), None

    def load_latest(self):
        """The newest intact save; corrupt newer ones are removed with a warning.

        Returns:
            (arrays, info), or None when there is no save.

        Raises:
            CheckpointError: there are saves but none is intact.
        """
        steps = self.steps()
        for index, step in enumerate(reversed(steps)):
            loaded, problem = self._load(step)
            if loaded is not None:
                return loaded
            older = steps[: len(steps) - index - 1]
            fallback = f"resuming from step {older[-1]}" if older else "no older save is left"
            warnings.warn(
                f"The training state saved at step {step} in {self.directory} is unusable: "
                f"{problem}. Removed it; {fallback}.",
                RuntimeWarning,
                stacklevel=2,
            )
            self._remove(step)
        if steps:
            raise CheckpointError(
                f"no intact training state is left in {self.directory}; delete that folder "
                "to train from the start."
            )
        return None

    def clear(self):
        """Delete every save (a finished run starts afresh next time)."""
        for step in self.steps():
            self._remove(step)
        self._prune_leftovers()

    def _prune_leftovers(self):
        if os.path.isdir(self.directory):
            self._prune()
            if not os.listdir(self.directory):
                os.rmdir(self.directory)


# ------------------------------------------------------------------ training state
def metric_variables(model):
    """The accumulators of `model`'s metrics."""
    return [variable for metric in model.metrics for variable in metric.variables]


def state_variables(model, include_metrics=True):
    """The training state of `model`: every variable of it and of its optimizer, without repeats.

    That is the weights, BN statistics, power-iteration vectors, seed-generator state, step
    counters, optimizer slots and (with `include_metrics`) metric accumulators.

    Args:
        model: a Keras model (its optimizer, if it has one, is included).
        include_metrics: whether the metrics' accumulators are included.

    Returns:
        A list of variables in a fixed order: the model's, then the optimizer's.
    """
    skip = set() if include_metrics else {id(variable) for variable in metric_variables(model)}
    optimizer = getattr(model, "optimizer", None)
    variables = []
    for variable in list(model.variables) + list(optimizer.variables if optimizer else []):
        if id(variable) not in skip:
            skip.add(id(variable))
            variables.append(variable)
    return variables


def _describe(variables):
    return [[variable.path, list(variable.shape)] for variable in variables]


def _assign(variables, arrays, what, directory):
    if len(arrays) != len(variables) or any(
        tuple(array.shape) != tuple(variable.shape) for variable, array in zip(variables, arrays)
    ):
        raise CheckpointError(
            f"the training state in {directory} was saved by a different model or optimizer "
            f"({len(arrays)} {what} arrays for {len(variables)} variables, or other shapes). "
            "Use another --output_dir, or delete that folder to train from the start."
        )
    for variable, array in zip(variables, arrays):
        variable.assign(array)
