"""Training that survives kills: step-level checkpoints, atomic files, mid-epoch resume.

`fit_resumable` trains a compiled model one `fit` call per epoch, on a
training dataset rebuilt for every epoch from the epoch's own seed, and a
`TrainingCheckpoint` callback saves the whole training state (every variable of
the model, the optimizer and the metrics, the data position and the history)
every N steps, at every epoch end and when the process gets SIGTERM or SIGINT.
Run again on the same directory, it restores the newest intact save, skips the
batches of the epoch already trained on and ends with the weights an
uninterrupted run would have.

Every file is written to a temporary name and renamed (`atomic_write`), so a
kill leaves either the old file or the new one. A save is two files,
`state-<step>.npz` (the arrays) and `state-<step>.json` (position, history and
the arrays' SHA-256), the JSON written last; the last two saves are kept.

Example:

```python
model.compile(total_steps=epochs * steps)
history = fit_resumable(
    model,
    lambda epoch: make_dataset("digits", seed=epoch_seed(0, epoch)),
    epochs=epochs,
    steps_per_epoch=steps,
    directory="runs/digits/checkpoints",
)
```
"""

import contextlib
import errno
import hashlib
import json
import os
import signal
import threading
import warnings

import keras
import numpy as np

FORMAT_VERSION = 1
STATE_PREFIX = "state-"
TEMPORARY_SUFFIX = ".tmp"


class CheckpointError(RuntimeError):
    """Saved training state that cannot be used (no intact save, another model)."""


class CheckpointWriteError(OSError):
    """A save failed (directory not writable, disk full); the previous save is intact."""


class TrainingInterrupted(Exception):
    """Training stopped on SIGTERM/SIGINT after saving its state.

    Attributes:
        signal_number: the signal received.
        step: the global step of the save.
        directory: where the state was saved.
    """

    def __init__(self, signal_number, step, directory):
        name = signal.Signals(signal_number).name
        super().__init__(
            f"interrupted by {name}; saved the training state at step {step} in "
            f"{directory}. Run the same command again to resume."
        )
        self.signal_number = signal_number
        self.step = step
        self.directory = directory


# ------------------------------------------------------------------ atomic files
def temporary_path(path):
    """The name `path` is written under before it is renamed to `path`.

    The temporary name keeps the extension, which some writers require
    (`model.keras` -> `model.tmp.keras`, `a.weights.h5` -> `a.tmp.weights.h5`).
    """
    directory, name = os.path.split(path)
    stem, dot, extension = name.partition(".")
    return os.path.join(directory, f"{stem}{TEMPORARY_SUFFIX}{dot}{extension}")


def _commit(temporary, path):
    """Rename the finished temporary file to its final name (one atomic step)."""
    os.replace(temporary, path)


def _sync_file(path):
    with open(path, "rb+") as file:
        os.fsync(file.fileno())


def _sync_directory(directory):
    if hasattr(os, "O_DIRECTORY"):
        descriptor = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path to write `path` under; rename it when the block ends.

    The file written at the temporary path is flushed to disk and renamed to
    `path`, so `path` is never seen half-written. If the block raises, the
    temporary file is removed and `path` is untouched.

    Args:
        path: the final file name.

    Yields:
        The temporary path (same folder and extension).
    """
    temporary = temporary_path(path)
    try:
        yield temporary
        _sync_file(temporary)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
    _commit(temporary, path)
    _sync_directory(os.path.dirname(path))


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a file that appears at `path` only once it is completely written.

    Args:
        path: the final file name.
        mode: "wb" or "w".

    Yields:
        The open temporary file.

    Example:
    ```python
    with atomic_write("metrics.json", "w") as file:
        json.dump(metrics, file)
    ```
    """
    with atomic_path(path) as temporary:
        with open(temporary, mode) as file:
            yield file


def write_json(path, value):
    """Write `value` as indented JSON to `path` atomically."""
    with atomic_write(path, "w") as file:
        json.dump(value, file, indent=2)


def save_model(model, path):
    """`model.save(path)` written atomically (a kill never leaves a broken `.keras`)."""
    with atomic_path(path) as temporary:
        model.save(temporary)


def epoch_seed(seed, epoch):
    """The data seed of one epoch: a well-mixed function of the run's seed and the epoch.

    Returns:
        An int in [0, 2**31).
    """
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0]
    return int(state) >> 1


# ------------------------------------------------------------------ saves on disk
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
def _metric_variables(model):
    return [variable for metric in model.metrics for variable in metric.variables]


def _state_variables(model):
    """Every variable of the model and its optimizer except the metrics', without repeats."""
    skip = {id(variable) for variable in _metric_variables(model)}
    variables = []
    for variable in list(model.variables) + list(model.optimizer.variables):
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


def _float_logs(logs):
    return {name: float(np.asarray(value)) for name, value in (logs or {}).items()}


class TrainingCheckpoint(keras.callbacks.Callback):
    """Saves the training state every N steps, after every epoch and on SIGTERM/SIGINT.

    A save holds every variable of the model and its optimizer (weights,
    optimizer slots and step counters, schedules' state, power-iteration
    vectors, BN statistics, the noise seed generator), the metrics' running
    totals, the data position (epoch, batches done in it) and the history of
    finished epochs. A batch-level log, one JSON line per step, goes to
    `step_log` and is cut back to the restored step on resume, so it has every
    step once. `fit_resumable` runs it; it must come after every callback
    that changes the model at the end of an epoch.

    Args:
        store: the `CheckpointStore`, or None to save nothing.
        steps_per_epoch: batches per epoch.
        every_n_steps: save after every this many global steps (and at epoch ends).
        step_log: path of the per-step log (JSON lines), or None.

    Example:
    ```python
    callback = TrainingCheckpoint(CheckpointStore("ckpt"), steps_per_epoch=50, every_n_steps=20)
    callback.set_model(model)
    callback.restore()  # before fit; then fit(..., initial_epoch=callback.epoch)
    ```
    """

    def __init__(self, store, steps_per_epoch, every_n_steps, step_log=None):
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}.")
        self.store = store
        self.steps_per_epoch = int(steps_per_epoch)
        self.every_n_steps = int(every_n_steps)
        self.step_log = step_log
        self.epoch = 0
        self.batch = 0
        self.history = []
        self.signal_number = None
        self._metric_arrays = None

    def get_config(self):
        return {
            "directory": self.store.directory if self.store else None,
            "steps_per_epoch": self.steps_per_epoch,
            "every_n_steps": self.every_n_steps,
            "step_log": self.step_log,
        }

    @property
    def step(self):
        """The model's global step (int)."""
        return int(keras.ops.convert_to_numpy(self.model.global_step))

    def request_stop(self, signal_number):
        """Save at the end of the running step, then stop training (a signal handler)."""
        self.signal_number = signal_number

    def restore(self):
        """Load the newest intact save into the model (its optimizer must be built).

        Returns:
            Whether a save was restored.
        """
        loaded = self.store.load_latest() if self.store else None
        if loaded is None:
            self._cut_step_log(0)
            return False
        arrays, info = loaded
        saved = len(info["variables"])
        _assign(_state_variables(self.model), arrays[:saved], "state", self.store.directory)
        self._metric_arrays = arrays[saved:] or None
        self.epoch, self.batch, self.history = info["epoch"], info["batch"], info["history"]
        self._cut_step_log(info["step"])
        return True

    def save(self):
        """Write the current state (with the metrics' totals inside an epoch)."""
        if self.store is None:
            return
        state = _state_variables(self.model)
        metrics = _metric_variables(self.model) if self.batch else []
        arrays = [keras.ops.convert_to_numpy(v) for v in state + metrics]
        info = {
            "epoch": self.epoch,
            "batch": self.batch,
            "history": self.history,
            "variables": _describe(state),
        }
        self.store.save(self.step, arrays, info)

    def on_epoch_begin(self, epoch, logs=None):
        if epoch != self.epoch or self.batch == 0:
            self.epoch, self.batch = epoch, 0
        elif self._metric_arrays is not None:  # Resumed inside this epoch.
            _assign(_metric_variables(self.model), self._metric_arrays, "metric", "the save")
        self._metric_arrays = None

    def on_train_batch_end(self, batch, logs=None):
        self.batch += 1
        step = self.step
        self._log_step(step, logs)
        if self.batch >= self.steps_per_epoch:
            return  # Saved by on_epoch_end, after validation.
        if self.signal_number is not None or step % self.every_n_steps == 0:
            self.save()
        if self.signal_number is not None:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.batch < self.steps_per_epoch:
            return  # Stopped inside the epoch.
        self.history.append(_float_logs(logs))
        self.epoch, self.batch = epoch + 1, 0
        self.save()
        if self.signal_number is not None:
            self.model.stop_training = True

    def _log_step(self, step, logs):
        if self.step_log is None:
            return
        record = {"step": step, "epoch": self.epoch, **_float_logs(logs)}
        try:
            with open(self.step_log, "a") as file:
                file.write(json.dumps(record) + "\n")
        except OSError as error:
            raise write_failure("the step log", os.path.dirname(self.step_log), error) from error

    def _cut_step_log(self, step):
        """Keep the log's lines up to `step` (a torn last line is dropped)."""
        if self.step_log is None or not os.path.exists(self.step_log):
            return
        kept = []
        with open(self.step_log) as file:
            for line in file:
                try:
                    record = json.loads(line)
                except ValueError:
                    break
                if record["step"] > step:
                    break
                kept.append(line)
        with atomic_write(self.step_log, "w") as file:
            file.writelines(kept)


class ModelSaver(keras.callbacks.Callback):
    """Saves the model to a `.keras` file after every epoch, atomically.

    Args:
        path: the `.keras` file.

    Example:
    ```python
    model.fit(data, epochs=3, callbacks=[ModelSaver("runs/x/model.keras")])
    ```
    """

    def __init__(self, path):
        super().__init__()
        self.path = path

    def get_config(self):
        return {"path": self.path}

    def on_epoch_end(self, epoch, logs=None):
        try:
            save_model(self.model, self.path)
        except OSError as error:
            raise write_failure("the model", os.path.dirname(self.path), error) from error


class _OneEpoch(keras.callbacks.Callback):
    """Ends `fit` after the epoch it runs, so that the next epoch gets new data;
    remembers whether another callback asked training to stop."""

    def __init__(self):
        super().__init__()
        self.stop_requested = False

    def on_epoch_end(self, epoch, logs=None):
        self.stop_requested = self.model.stop_training
        self.model.stop_training = True


@contextlib.contextmanager
def _stop_on_signals(checkpoint):
    """While active, SIGTERM and SIGINT ask `checkpoint` to save and stop (once)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signal_number, frame):
        checkpoint.request_stop(signal_number)
        for number, action in previous.items():
            signal.signal(number, action)  # A second signal acts as usual.

    for number in (signal.SIGTERM, signal.SIGINT):
        previous[number] = signal.signal(number, handler)
    try:
        yield
    finally:
        for number, action in previous.items():
            signal.signal(number, action)


def fit_resumable(
    model,
    make_train_data,
    epochs,
    steps_per_epoch,
    directory=None,
    checkpoint_every_steps=500,
    step_log=None,
    callbacks=(),
    **fit_kwargs,
):
    """Train like `model.fit`, resumably: restore the newest save, save as it goes.

    Each epoch is one `fit` call on `make_train_data(epoch)`; a resumed epoch
    skips the batches already trained on. The same call after a kill
    therefore ends with the same variables as an uninterrupted one.

    Args:
        model: a compiled `keras_nvae.NVAE` (or a model with `global_step`).
        make_train_data: function of the epoch number returning its
            `tf.data.Dataset` of at least `steps_per_epoch` batches, the same
            batches for the same epoch (e.g. seeded with `epoch_seed`).
        epochs: epochs in total.
        steps_per_epoch: batches per epoch.
        directory: where the saves go, or None to neither save nor restore.
        checkpoint_every_steps: save every this many steps.
        step_log: path of the per-step log, or None.
        callbacks: other Keras callbacks.
        **fit_kwargs: other `fit` arguments (validation_data, verbose, ...).

    Returns:
        The history: {metric: [value per epoch]} over all epochs trained,
        before an interruption too.

    Raises:
        TrainingInterrupted: SIGTERM/SIGINT arrived; the state was saved.
        CheckpointWriteError: a save could not be written.
        CheckpointError: the saves in `directory` cannot be used.
    """
    store = CheckpointStore(directory) if directory else None
    checkpoint = TrainingCheckpoint(store, steps_per_epoch, checkpoint_every_steps, step_log)
    checkpoint.set_model(model)
    with model.distribute_strategy.scope():
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
    if step_log:
        os.makedirs(os.path.dirname(os.path.abspath(step_log)), exist_ok=True)
    checkpoint.restore()
    fit_kwargs.setdefault("shuffle", False)  # Each epoch's data comes shuffled.
    one_epoch = _OneEpoch()
    all_callbacks = list(callbacks) + [checkpoint, one_epoch]
    with _stop_on_signals(checkpoint):
        while checkpoint.epoch < epochs and checkpoint.signal_number is None:
            epoch, skip = checkpoint.epoch, checkpoint.batch
            data = make_train_data(epoch).take(steps_per_epoch).skip(skip)
            model.fit(
                data,
                initial_epoch=epoch,
                epochs=epochs,
                steps_per_epoch=steps_per_epoch - skip,
                callbacks=all_callbacks,
                **fit_kwargs,
            )
            if checkpoint.epoch == epoch or one_epoch.stop_requested:
                break  # A signal, or another callback stopped training.
    if checkpoint.signal_number is not None:
        raise TrainingInterrupted(checkpoint.signal_number, checkpoint.step, directory)
    return _history(checkpoint.history)


def _history(epochs):
    names = list(dict.fromkeys(name for logs in epochs for name in logs))
    return {name: [logs.get(name, float("nan")) for logs in epochs] for name in names}
