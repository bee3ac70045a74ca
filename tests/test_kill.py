"""The trainer survives kills: `nvae-train` on the `tiny` preset, killed again and again in a
subprocess (SIGKILL after seeded random steps, and between writing a save and renaming it),
restarted each time with the same command, must end as an uninterrupted run of the same seed ends:
the same number of optimizer steps, the same weights, every step logged once.

SIGTERM's save before exit is tested in-process (tests/test_checkpointing.py), which keeps this
test's six processes (each ~30 s of TF import and tracing on 2 cores) near 3 minutes."""

import io
import json
import os
import random
import signal
import subprocess
import sys
import zipfile

import h5py
import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS, STEPS_PER_EPOCH, BATCH = 3, 5, 8
TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH
SAVE_EVERY = 2
# The bound on the resumed run's weights (max relative difference per tensor); on CPU
# the restored run repeats the same float32 ops on the same values, so it meets it exactly.
RESUME_RTOL = 1e-4

# Runs the trainer with a callback that sends SIGNAL to the process after global step STEP, and
# SIGKILLs the process when it is about to rename the arrays of the save of step COMMIT_STEP.
DRIVER = """
import os, signal, sys
import keras
from keras_nvae.training import atomic_files
from keras_nvae.cli import train

STEP, SIGNAL, COMMIT_STEP = {step}, {signal}, {commit_step}


class SignalAfterStep(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.global_step.numpy()) == STEP:
            os.kill(os.getpid(), SIGNAL)


make_callbacks = train.make_callbacks
train.make_callbacks = lambda directory: make_callbacks(directory) + [SignalAfterStep()]
commit = atomic_files._commit


def commit_or_die(temporary, path):
    if os.path.basename(path) == f"state-{{COMMIT_STEP:010d}}.npz":
        os.kill(os.getpid(), signal.SIGKILL)
    commit(temporary, path)


atomic_files._commit = commit_or_die
sys.exit(train.main(sys.argv[1:]))
"""


def _command(output_dir, data, step=-1, signal_number=0, commit_step=-1):
    driver = DRIVER.format(step=step, signal=int(signal_number), commit_step=commit_step)
    return [
        sys.executable, "-c", driver, "train",
        # `tiny` with one latent scale and no flows: half the trace time of each process.
        "--preset=tiny", "--override=num_latent_scales=1", "--override=num_flows=0",
        f"--dataset={data}", f"--epochs={EPOCHS}", f"--batch_size={BATCH}",
        f"--checkpoint_every_steps={SAVE_EVERY}", "--max_eval_batches=1", "--eval_samples=1",
        "--pictures_every_n_epochs=0", "--jit_compile=false", f"--output_dir={output_dir}",
    ]


def _start(command):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )


def _run(command):
    process = _start(command)
    stdout, stderr = process.communicate(timeout=300)
    return process.returncode, stdout, stderr


def _plan(seed=14):
    """The interruptions, in order: (kind, step). Steps are distinct and increasing, so every
    run gets further than the one before; the torn save is one the run makes (even step or
    epoch end)."""
    rng = random.Random(seed)
    saves = [s for s in range(1, TOTAL_STEPS) if s % SAVE_EVERY == 0 or s % STEPS_PER_EPOCH == 0]
    commit_step = rng.choice(saves[2:-2])
    steps = rng.sample([s for s in range(1, TOTAL_STEPS) if s != commit_step], 3)
    events = [("sigkill", step) for step in steps] + [("torn_save", commit_step)]
    return sorted(events, key=lambda event: event[1])


def _weights(model_file):
    """Every array of a .keras file (model and optimizer variables), by path."""
    with zipfile.ZipFile(model_file) as archive:
        data = io.BytesIO(archive.read("model.weights.h5"))
    arrays = {}
    with h5py.File(data, "r") as file:
        file.visititems(
            lambda name, item: arrays.__setitem__(name, item[()])
            if isinstance(item, h5py.Dataset) else None
        )
    return arrays


def _steps(output_dir):
    with open(os.path.join(output_dir, "train_steps.jsonl")) as file:
        return [json.loads(line) for line in file]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "images.npz"
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (STEPS_PER_EPOCH * BATCH + BATCH, 16, 16, 3)).astype("uint8")
    np.savez(path, train=images[:-BATCH], test=images[-BATCH:])
    return str(path)


@pytest.mark.slow
def test_killed_runs_end_like_an_uninterrupted_run(data, tmp_path):
    reference_dir, resumed_dir = str(tmp_path / "reference"), str(tmp_path / "resumed")
    reference = _start(_command(reference_dir, data))  # Alongside the interrupted runs.
    for kind, step in _plan():
        if kind == "torn_save":
            status, _, stderr = _run(_command(resumed_dir, data, commit_step=step))
            assert status == -signal.SIGKILL, stderr
            leftover = os.path.join(resumed_dir, "checkpoints", f"state-{step:010d}.tmp.npz")
            assert os.path.exists(leftover)  # Killed after writing, before the rename.
        else:
            status, _, stderr = _run(_command(resumed_dir, data, step, signal.SIGKILL))
            assert status == -signal.SIGKILL, stderr
    status, stdout, stderr = _run(_command(resumed_dir, data))
    assert status == 0, stderr
    assert stdout.splitlines()[-1].startswith("test bits/dim:")
    reference_stdout, reference_stderr = reference.communicate(timeout=300)
    assert reference.returncode == 0, reference_stderr

    metrics = {}
    for name, directory in (("reference", reference_dir), ("resumed", resumed_dir)):
        with open(os.path.join(directory, "metrics.json")) as file:
            metrics[name] = json.load(file)
        assert not os.path.exists(os.path.join(directory, "checkpoints"))
    assert metrics["resumed"]["global_step"] == metrics["reference"]["global_step"] == TOTAL_STEPS
    expected = _weights(os.path.join(reference_dir, "model.keras"))
    weights = _weights(os.path.join(resumed_dir, "model.keras"))
    assert sorted(weights) == sorted(expected)
    for name, value in expected.items():
        scale = max(float(np.max(np.abs(value))), 1e-12) if value.size else 1.0
        difference = float(np.max(np.abs(weights[name] - value))) / scale if value.size else 0.0
        assert difference <= RESUME_RTOL, (name, difference)
    for name, values in metrics["reference"]["history"].items():
        np.testing.assert_allclose(
            metrics["resumed"]["history"][name], values, rtol=RESUME_RTOL, err_msg=name
        )
    steps, reference_steps = _steps(resumed_dir), _steps(reference_dir)
    assert [record["step"] for record in steps] == list(range(1, TOTAL_STEPS + 1))
    np.testing.assert_allclose(
        [r["loss"] for r in steps], [r["loss"] for r in reference_steps], rtol=RESUME_RTOL
    )
