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
import json
import os
import signal
import threading

import keras
import numpy as np

from keras_nvae.training.atomic_files import atomic_write
from keras_nvae.training.atomic_files import save_model
from keras_nvae.training.checkpoint_store import CheckpointStore
from keras_nvae.training.checkpoint_store import _assign
from keras_nvae.training.checkpoint_store import _describe
from keras_nvae.training.checkpoint_store import metric_variables
from keras_nvae.training.checkpoint_store import state_variables
from keras_nvae.training.checkpoint_store import write_failure


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


def epoch_seed(seed, epoch):
    """The data seed of one epoch: a well-mixed function of the run's seed and the epoch.

    Returns:
        An int in [0, 2**31).
    """
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0]
    return int(state) >> 1


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
        _assign(state_variables(self.model, include_metrics=False), arrays[:saved], "state", self.store.directory)
        self._metric_arrays = arrays[saved:] or None
        self.epoch, self.batch, self.history = info["epoch"], info["batch"], info["history"]
        self._cut_step_log(info["step"])
        return True

    def save(self):
        """Write the current state (with the metrics' totals inside an epoch)."""
        if self.store is None:
            return
        state = state_variables(self.model, include_metrics=False)
        metrics = metric_variables(self.model) if self.batch else []
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
            _assign(metric_variables(self.model), self._metric_arrays, "metric", "the save")
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
