"""Tests for keras_nvae.training.atomic_files, checkpoint_store and checkpointing: atomic files,
the save store (corrupt-latest fallback, keeping two saves, write failures) and an in-process
mid-epoch resume after SIGTERM that must end where an uninterrupted run ends."""

import errno
import json
import os
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf
from harness import lean_tiny

from keras_nvae.training import atomic_files
from keras_nvae.training import checkpoint_store
from keras_nvae.training import checkpointing
from keras_nvae.training.checkpoint_store import CheckpointStore

# Resumed and uninterrupted runs must agree to this relative difference per tensor (the issue's
# bound); on CPU the same ops on the same values give the same bits, so they agree exactly.
RESUME_RTOL = 1e-4


def max_relative_difference(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12)) if a.size else 0.0


# ---------------------------------------------------------------- atomic files
def test_temporary_path_keeps_the_extension():
    assert atomic_files.temporary_path("/r/model.keras") == "/r/model.tmp.keras"
    assert atomic_files.temporary_path("/r/a.weights.h5") == "/r/a.tmp.weights.h5"
    assert atomic_files.temporary_path("metrics.json") == "metrics.tmp.json"


def test_atomic_write_replaces_only_a_complete_file(tmp_path):
    path = str(tmp_path / "metrics.json")
    atomic_files.write_json(path, {"a": 1})
    with pytest.raises(RuntimeError, match="mid-write"):
        with atomic_files.atomic_write(path, "w") as file:
            file.write('{"a": 2, "trunc')
            raise RuntimeError("mid-write")
    with open(path) as file:
        assert json.load(file) == {"a": 1}
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_epoch_seed_is_fixed_per_epoch_and_differs_between_epochs():
    seeds = [checkpointing.epoch_seed(3, epoch) for epoch in range(50)]
    assert seeds == [checkpointing.epoch_seed(3, epoch) for epoch in range(50)]
    assert len(set(seeds)) == 50 and all(0 <= s < 2**31 for s in seeds)
    assert checkpointing.epoch_seed(4, 0) != seeds[0]


# ---------------------------------------------------------------- the store
def _arrays(step):
    return [np.full((3, 2), step, np.float32), np.arange(step, dtype=np.int64)]


def _save(store, step):
    store.save(step, _arrays(step), {"epoch": 0, "batch": step, "history": []})


def test_store_keeps_the_last_two_saves_and_loads_the_newest(tmp_path):
    store = CheckpointStore(str(tmp_path))
    for step in (2, 4, 6):
        _save(store, step)
    assert store.steps() == [4, 6]
    assert sorted(os.listdir(tmp_path)) == [
        f"state-{step:010d}.{ext}" for step in (4, 6) for ext in ("json", "npz")
    ]
    arrays, info = store.load_latest()
    assert info["step"] == 6 and info["batch"] == 6
    for loaded, saved in zip(arrays, _arrays(6)):
        np.testing.assert_array_equal(loaded, saved)


@pytest.mark.parametrize("damage", ["truncate_data", "truncate_json", "flip_byte"])
def test_a_corrupt_latest_save_falls_back_to_the_previous_one(tmp_path, damage):
    store = CheckpointStore(str(tmp_path))
    _save(store, 2)
    _save(store, 4)
    data = tmp_path / "state-0000000004.npz"
    info = tmp_path / "state-0000000004.json"
    if damage == "truncate_data":
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    elif damage == "truncate_json":
        info.write_text(info.read_text()[:20])
    else:
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        data.write_bytes(bytes(raw))
    with pytest.warns(RuntimeWarning, match="saved at step 4 .* unusable.*resuming from step 2"):
        arrays, loaded = store.load_latest()
    assert loaded["step"] == 2
    np.testing.assert_array_equal(arrays[0], _arrays(2)[0])
    assert store.steps() == [2]  # The corrupt save is removed, so it cannot displace step 2.


def test_no_intact_save_is_an_error_saying_what_to_do(tmp_path):
    store = CheckpointStore(str(tmp_path))
    _save(store, 2)
    (tmp_path / "state-0000000002.npz").write_bytes(b"")
    with pytest.warns(RuntimeWarning, match="no older save is left"):
        with pytest.raises(checkpoint_store.CheckpointError, match="delete that folder"):
            store.load_latest()


def test_a_kill_before_the_rename_leaves_the_previous_save_in_use(tmp_path, monkeypatch):
    store = CheckpointStore(str(tmp_path))
    _save(store, 2)

    class Killed(BaseException):
        pass

    def die(temporary, path):
        raise Killed  # What SIGKILL between writing and renaming leaves behind, in-process.

    monkeypatch.setattr(atomic_files, "_commit", die)
    with pytest.raises(Killed):
        _save(store, 4)
    monkeypatch.undo()
    (tmp_path / "state-0000000004.tmp.npz").write_bytes(b"partial")  # As a kill leaves it.
    assert store.load_latest()[1]["step"] == 2
    _save(store, 6)  # The next save clears the leftovers.
    assert sorted(os.listdir(tmp_path)) == [
        f"state-{step:010d}.{ext}" for step in (2, 6) for ext in ("json", "npz")
    ]


# ------------------------------------------------------------- write failures
def _compiled_tiny():
    model = lean_tiny()
    model.compile(total_steps=10, steps_per_epoch=5, jit_compile=False)
    model.optimizer.build(model.trainable_variables)
    return model


@pytest.fixture(scope="module")
def compiled_tiny():
    """A compiled lean `tiny` NVAE of this module (its state is saved, never changed)."""
    return _compiled_tiny()


@pytest.mark.parametrize(
    "error, message",
    [
        (
            PermissionError(errno.EACCES, "Permission denied"),
            r"could not save the training state in .* \(permission denied\)\. Training stopped; "
            r"make .* writable or pass another --output_dir, then run the same command again: "
            r"it resumes from the previous save, which is intact\.",
        ),
        (
            OSError(errno.ENOSPC, "No space left on device"),
            r"could not save the training state in .* \(the disk is full\)\. Training stopped; "
            r"free disk space or pass another --output_dir",
        ),
    ],
    ids=["not_writable", "disk_full"],
)
def test_a_failed_save_explains_itself_and_changes_nothing(
    compiled_tiny, tmp_path, monkeypatch, error, message
):
    model = compiled_tiny
    store = CheckpointStore(str(tmp_path))
    callback = checkpointing.TrainingCheckpoint(store, steps_per_epoch=5, every_n_steps=1)
    callback.set_model(model)
    callback.save()  # The previous save, at step 0.
    before = [v.numpy().copy() for v in model.variables + model.optimizer.variables]

    def failing_writer(file, arrays):
        file.write(b"PK\x03\x04 half an archive")
        raise error

    monkeypatch.setattr(checkpoint_store, "_write_arrays", failing_writer)
    model.global_step.assign(3)
    try:
        with pytest.raises(checkpoint_store.CheckpointWriteError, match=message):
            callback.save()
    finally:
        model.global_step.assign(0)
    monkeypatch.undo()
    after = [v.numpy() for v in model.variables + model.optimizer.variables]
    for old, new, variable in zip(before, after, model.variables + model.optimizer.variables):
        np.testing.assert_array_equal(old, new, err_msg=variable.path)
    assert sorted(os.listdir(tmp_path)) == ["state-0000000000.json", "state-0000000000.npz"]
    arrays, info = store.load_latest()
    assert info["step"] == 0
    for array, value in zip(arrays, before):
        np.testing.assert_array_equal(array, value)


def test_a_save_of_another_model_is_refused_clearly(compiled_tiny, tmp_path):
    store = CheckpointStore(str(tmp_path))
    info = {"epoch": 0, "batch": 0, "history": [], "variables": [["x", [3]]]}
    store.save(0, [np.zeros(3, np.float32)], info)
    callback = checkpointing.TrainingCheckpoint(store, steps_per_epoch=5, every_n_steps=1)
    callback.set_model(compiled_tiny)
    with pytest.raises(checkpoint_store.CheckpointError, match="saved by a different model"):
        callback.restore()


# ------------------------------------------------------------- resume in-process
STEPS_PER_EPOCH = 3
EPOCHS = 2
IMAGES = np.random.RandomState(0).randint(0, 256, (24, 16, 16, 3)).astype("uint8")


def _epoch_data(epoch):
    """Shuffled per epoch with the epoch's seed: the same batches for the same epoch."""
    seed = checkpointing.epoch_seed(0, epoch)
    return tf.data.Dataset.from_tensor_slices(IMAGES).shuffle(24, seed=seed).batch(8)


class _SignalAt(keras.callbacks.Callback):
    """Sends `signal_number` to this process after global step `step`."""

    def __init__(self, step, signal_number):
        super().__init__()
        self.step, self.signal_number = step, signal_number

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.global_step.numpy()) == self.step:
            os.kill(os.getpid(), self.signal_number)


def _train(model, directory, callbacks=()):
    return checkpointing.fit_resumable(
        model,
        _epoch_data,
        epochs=EPOCHS,
        steps_per_epoch=STEPS_PER_EPOCH,
        directory=str(directory / "checkpoints"),
        checkpoint_every_steps=100,
        step_log=str(directory / "steps.jsonl"),
        callbacks=callbacks,
        verbose=0,
    )


@pytest.mark.slow
def test_sigterm_saves_mid_epoch_and_the_resumed_run_ends_like_an_uninterrupted_one(tmp_path):
    signal_number = signal.SIGTERM
    # One model (one traced train step) runs both: uninterrupted, then from the same start
    # interrupted and resumed.
    keras.utils.set_random_seed(1)
    model = _compiled_tiny()
    variables = checkpoint_store.state_variables(model, include_metrics=False)
    initial = [variable.numpy() for variable in variables]
    reference_history = _train(model, tmp_path / "reference")
    assert int(model.global_step.numpy()) == EPOCHS * STEPS_PER_EPOCH
    expected = [variable.numpy() for variable in variables]

    for variable, value in zip(variables, initial):
        variable.assign(value)
    handler = signal.getsignal(signal_number)
    with pytest.raises(checkpointing.TrainingInterrupted, match="at step 4 .* Run the same"):
        _train(model, tmp_path / "resumed", [_SignalAt(4, signal_number)])
    assert signal.getsignal(signal_number) is handler
    store = CheckpointStore(str(tmp_path / "resumed" / "checkpoints"))
    assert store.steps() == [3, 4]  # The epoch end, and the save on the signal.
    assert store.load_latest()[1]["epoch"] == 1 and store.load_latest()[1]["batch"] == 1

    model.optimizer.iterations.assign(99)  # In-memory state after the save must not survive.
    history = _train(model, tmp_path / "resumed")
    assert int(model.global_step.numpy()) == EPOCHS * STEPS_PER_EPOCH
    for variable, value in zip(variables, expected):
        difference = max_relative_difference(variable.numpy(), value)
        assert difference <= RESUME_RTOL, (variable.path, difference)
    # The resumed epoch's mean covers all its batches, as the restored running totals say.
    for name, values in reference_history.items():
        np.testing.assert_allclose(history[name], values, rtol=RESUME_RTOL, err_msg=name)
    with open(tmp_path / "resumed" / "steps.jsonl") as file:
        records = [json.loads(line) for line in file]
    assert [record["step"] for record in records] == list(range(1, 7))
    with open(tmp_path / "reference" / "steps.jsonl") as file:
        expected = [json.loads(line) for line in file]
    np.testing.assert_allclose(
        [r["loss"] for r in records], [r["loss"] for r in expected], rtol=RESUME_RTOL
    )


def test_the_trainer_exits_with_128_plus_the_signal_number_and_says_how_to_resume(
    monkeypatch, capsys
):
    from keras_nvae.cli import train

    def interrupted():
        raise checkpointing.TrainingInterrupted(signal.SIGTERM, 7, "runs/x/checkpoints")

    monkeypatch.setattr(train, "train", interrupted)
    assert train.main(["train"]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err == (
        "train: interrupted by SIGTERM; saved the training state at step 7 in "
        "runs/x/checkpoints. Run the same command again to resume.\n"
    )
