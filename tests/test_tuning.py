"""Tests for KerasTuner searches: keras_nvae.tuning and the trainers/tune.py program."""

import contextlib
import csv
import io
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time

import keras
import keras_tuner
import numpy as np
import pytest
import tensorflow as tf

from keras_nvae.training import tuning
from keras_nvae.cli import tune

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OBJECTIVE = keras_tuner.Objective("val_bpd", "min")
# The `tiny` preset cut down further (one latent scale, no pre-/post-processing
# blocks, no flows, no squeeze-and-excitation): every trial traces a new train
# step, which dominates the test time (~10 s of CPU per trial, against ~15 s
# with one pre- and one post-processing block).
SMALL = dict(
    num_latent_scales=1,
    use_se=False,
    num_preprocess_blocks=0,
    num_postprocess_blocks=0,
    num_flows=0,
    batch_size=16,
)
# Fixed-seed validation of the same weights on the same batches repeats the
# same float32 computation; the only slack is for op scheduling (1e-5 bits/dim,
# ~40x float32 resolution at ~9 bits/dim).
BPD_TOLERANCE = 1e-5
# A line Keras' `fit(verbose=2)` prints per epoch of a trial.
EPOCH_LINE = re.compile(r"^\d+/\d+ - .* - val_bpd: ", re.MULTILINE)


def _images(count, seed):
    """Smooth colour ramps with noise: 16x16 RGB uint8, like `tiny` expects."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 200, size=(count, 1, 1, 3))
    ramp = np.linspace(0, 50, 16)[None, :, None, None]
    noise = rng.normal(0, 8, (count, 16, 16, 3))
    return np.clip(base + ramp + noise, 0, 255).astype("uint8")


# ------------------------------------------------------------- search spaces
def test_default_search_space_follows_the_preset():
    space = tuning.default_search_space(tuning.NVAEHyperModel("tiny").base_config)
    assert space["num_channels_enc"] == [4, 8, 16]
    assert space["num_groups_per_scale"] == [1, 2, 4]
    # One latent scale cannot have a single group (NVAEConfig rejects it).
    one_scale = tuning.NVAEHyperModel("cifar10").base_config
    assert tuning.default_search_space(one_scale)["num_groups_per_scale"] == [15, 30, 60]
    fixed = tuning.NVAEHyperModel("tiny", num_flows=0)
    assert "num_flows" not in fixed.search_space


@pytest.mark.parametrize(
    "space, message",
    [
        ({"num_channel_enc": [8, 16]}, r"unknown hyper-parameter name\(s\) \['num_channel_enc'\]"),
        ({"learning_rate": []}, "non-empty list"),
        ({"learning_rate": {"low": 1e-3, "max": 1e-2}}, "'min' and 'max'"),
        ({"learning_rate": {"min": 1e-2, "max": 1e-3}}, "min <= max"),
        ({"num_flows": [0, -1]}, r"value -1 is invalid for preset 'tiny'.*num_flows"),
        ({"num_mixtures": [1, 2]}, "both fixed overrides and searched"),
        ({"num_latent_scales": [1], "num_groups_per_scale": [1]}, "needs a value >= 2"),
    ],
)
def test_bad_search_spaces_are_clear_errors(space, message):
    with pytest.raises(ValueError, match=message):
        tuning.NVAEHyperModel("tiny", search_space=space, num_mixtures=2)


def test_callable_search_space_names_are_checked():
    hypermodel = tuning.NVAEHyperModel("tiny", search_space=lambda hp: {"width": hp.Int("w", 4, 8)})
    with pytest.raises(ValueError, match=r"unknown hyper-parameter name\(s\) \['width'\]"):
        hypermodel.searched_values(keras_tuner.HyperParameters())


def test_groups_are_one_choice_per_number_of_scales():
    hypermodel = tuning.NVAEHyperModel(
        "tiny", search_space={"num_latent_scales": [1, 2], "num_groups_per_scale": [1, 2, 3]}
    )
    hp = keras_tuner.HyperParameters()
    assert hypermodel.searched_values(hp) == {"num_latent_scales": 1, "num_groups_per_scale": 2}
    groups = [h for h in hp.space if h.name == "num_groups_per_scale"]
    assert [(h.conditions[0].values, h.values) for h in groups] == [([1], [2, 3]), ([2], [1, 2, 3])]
    hp.values["num_latent_scales"] = 2
    hp.values["num_groups_per_scale"] = 1
    assert hypermodel.searched_values(hp) == {"num_latent_scales": 2, "num_groups_per_scale": 1}


def test_non_finite_epoch_logs_fail_the_trial():
    check = tuning._FailOnNonFinite()
    check.on_epoch_end(0, {"loss": 3.0, "val_bpd": 8.0})
    with pytest.raises(keras_tuner.errors.FailedTrialError, match=r"non-finite loss \(nan\) at epoch 2"):
        check.on_epoch_end(1, {"loss": float("nan"), "val_bpd": 8.0})
    with pytest.raises(keras_tuner.errors.FailedTrialError, match=r"non-finite val_bpd \(inf\)"):
        check.on_epoch_end(0, {"loss": 1.0, "val_bpd": float("inf")})


def test_hyperband_needs_max_epochs():
    hypermodel = tuning.NVAEHyperModel("tiny", search_space={"num_flows": [0]})
    hp = keras_tuner.HyperParameters()
    hp.values["tuner/epochs"] = 2
    with pytest.raises(ValueError, match="pass `max_epochs` to NVAEHyperModel"):
        hypermodel._schedule_epochs(hp, 2)


# --------------------------------------------------------- in-process searches
@pytest.mark.slow
def test_random_search_on_arrays_records_a_diverging_trial_as_failed(tmp_path):
    x_train, x_val = _images(32, 0), _images(16, 1)
    hypermodel = tuning.NVAEHyperModel(
        "tiny", search_space={"learning_rate": [2e-3, 1e9]}, **SMALL
    )
    tuner = keras_tuner.RandomSearch(
        hypermodel, objective=OBJECTIVE, max_trials=2, directory=str(tmp_path), seed=0
    )
    tuner.search(x_train, validation_data=(x_val,), epochs=1, batch_size=8, verbose=0)

    trials = {t.hyperparameters.values["learning_rate"]: t for t in tuner.oracle.trials.values()}
    assert trials[1e9].status == "FAILED"
    assert "non-finite" in trials[1e9].message
    good = trials[2e-3]
    assert good.status == "COMPLETED" and math.isfinite(good.score)
    # A few steps in, the NELBO of 8-bit images is still near the 8 bits/dim of a uniform model.
    assert 6.0 < good.score < 12.0
    # The best model reproduces its recorded score (same weights, fixed noise).
    best = tuner.get_best_models(1)[0]
    assert best.config.learning_rate == 2e-3
    assert abs(tuning.evaluate_bpd(best, x_val, batch_size=8) - good.score) < BPD_TOLERANCE


class _RecordSchedule(keras.callbacks.Callback):
    """Records, when each trial starts training, its schedule length and the
    optimizer step it starts from."""

    records = []

    def on_train_begin(self, logs=None):
        _RecordSchedule.records.append(
            (
                int(self.model.total_steps.numpy()),
                int(self.model.optimizer.iterations.numpy()),
                self.model.config.batch_size,
            )
        )


@pytest.mark.slow
def test_hyperband_on_a_dataset_keeps_the_schedule_across_brackets(tmp_path):
    train = tf.data.Dataset.from_tensor_slices(_images(32, 0)).batch(8)
    val = tf.data.Dataset.from_tensor_slices(_images(16, 1)).batch(8)
    fixed = {name: value for name, value in SMALL.items() if name != "batch_size"}
    hypermodel = tuning.NVAEHyperModel(
        "tiny", search_space={"batch_size": [8, 16]}, max_epochs=2, **fixed
    )
    tuner = keras_tuner.Hyperband(
        hypermodel, objective=OBJECTIVE, max_epochs=2, factor=2, directory=str(tmp_path), seed=0
    )
    # The first bracket: two 1-epoch trials, then the better one continued to epoch 2.
    tuner.oracle.max_trials = 3
    _RecordSchedule.records = []
    tuner.search(train, validation_data=val, epochs=2, callbacks=[_RecordSchedule()], verbose=0)

    trials = sorted(tuner.oracle.trials.values(), key=lambda t: int(t.trial_id))
    assert [t.status for t in trials] == ["COMPLETED"] * 3
    assert all(math.isfinite(t.score) for t in trials)
    continued = trials[2].hyperparameters.values
    assert continued["tuner/initial_epoch"] == 1 and "tuner/trial_id" in continued
    for (total_steps, start_step, batch_size), trial in zip(_RecordSchedule.records, trials):
        steps_per_epoch = 32 // batch_size  # the searched batch size re-batches the data
        assert batch_size == trial.hyperparameters.values["batch_size"]
        assert total_steps == 2 * steps_per_epoch  # max_epochs x steps per epoch
        # The continued trial resumes its predecessor's optimizer state.
        assert start_step == (steps_per_epoch if trial is trials[2] else 0)


# ------------------------------------------------------------------ program
def _tune_args(directory, data, *extra):
    """The program's flags for a one-epoch search of the SMALL model."""
    return [
        "--preset=tiny",
        f"--dataset={data}",
        "--epochs=1",
        f"--directory={directory}",
        "--project_name=p",
        *[f"--override={k}={json.dumps(v)}" for k, v in SMALL.items()],
        *extra,
    ]


def _tune_command(directory, data, *extra):
    """The program as a user runs it, in a new process."""
    return [sys.executable, "-m", "trainers.tune", *_tune_args(directory, data, *extra)]


def _environment(**extra):
    env = dict(os.environ, PYTHONPATH=ROOT, **extra)
    return env


def _trial_status(project, trial_id):
    path = os.path.join(project, f"trial_{trial_id}", "trial.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as file:
            return json.load(file)["status"]
    except (json.JSONDecodeError, OSError):  # Being written.
        return None


def _children_running_a_trial(pid):
    """Ids of processes whose parent is `pid` and that run `--run_trial`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                parent = int(file.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as file:
                command = file.read()
        except OSError:
            continue
        if parent == pid and b"--run_trial" in command:
            found.append(int(entry))
    return found


def _wait_for(condition, process, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        assert process.poll() is None, "the search ended early"
        time.sleep(1)
    raise AssertionError("timed out")


@pytest.fixture(scope="module")
def interrupted_search(tmp_path_factory):
    """A program search whose first trial's process is killed (as by the
    out-of-memory killer), whose whole process is killed after the first
    completed trial, and which is then run again to the end by `tune.main` in
    this process (trials in-process).

    Returns:
        (project folder, output of the second run, trial_1's trial.json text
        before the restart).
    """
    directory = tmp_path_factory.mktemp("tune")
    data = os.path.join(directory, "images.npz")
    np.savez(data, train=_images(32, 0), test=_images(16, 1))
    space = os.path.join(directory, "space.json")
    with open(space, "w") as file:
        json.dump({"learning_rate": [2e-3, 5e-3, 1e-2]}, file)
    args = _tune_args(directory, data, "--max_trials=3", f"--search_space={space}")
    project = os.path.join(directory, "p")
    first = subprocess.Popen(
        [sys.executable, "-m", "trainers.tune", *args, "--trial_in_subprocess"],
        cwd=directory, env=_environment(), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        child = _wait_for(lambda: _children_running_a_trial(first.pid), first, 300)
        os.kill(child[0], signal.SIGKILL)
        _wait_for(lambda: _trial_status(project, 1) == "COMPLETED", first, 600)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    with open(os.path.join(project, "trial_1", "trial.json")) as file:
        completed = file.read()
    # The restart trains in-process (both ways of running a trial are then used).
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        status = tune.main(["nvae-tune", *args])
    assert status == 0, output.getvalue()[-3000:]
    return project, output.getvalue(), completed


@pytest.mark.slow
def test_restarted_search_does_not_rerun_trials(interrupted_search):
    project, output, completed = interrupted_search
    assert "Reloading Tuner" in output
    assert len(EPOCH_LINE.findall(output)) == 1  # only the unfinished third trial trained
    with open(os.path.join(project, "trial_1", "trial.json")) as file:
        assert file.read() == completed
    assert [_trial_status(project, i) for i in range(3)] == ["FAILED", "COMPLETED", "COMPLETED"]
    assert not os.path.exists(os.path.join(project, "trial_3"))


@pytest.mark.slow
def test_results_table_and_best_model(interrupted_search):
    project = interrupted_search[0]
    with open(os.path.join(project, "results.csv")) as file:
        rows = list(csv.DictReader(file))
    assert [row["status"] for row in rows] == ["COMPLETED", "COMPLETED", "FAILED"]
    scores = [float(row["val_bpd"]) for row in rows[:2]]
    assert scores == sorted(scores)
    assert rows[2]["trial_id"] == "0"
    assert "killed by SIGKILL (out of memory?)" in rows[2]["reason"]
    with open(os.path.join(project, "results.md")) as file:
        assert file.readline().startswith("| rank | trial_id | status | val_bpd | learning_rate |")
    with open(os.path.join(project, "best_hyperparameters.json")) as file:
        best = json.load(file)
    assert best["trial_id"] == rows[0]["trial_id"]
    assert best["val_bpd"] == pytest.approx(scores[0], abs=1e-5)

    model = keras.saving.load_model(os.path.join(project, "best_model.keras"))
    assert model.config.learning_rate == best["hyperparameters"]["learning_rate"]
    validation = np.load(os.path.join(os.path.dirname(project), "images.npz"))["test"]
    # The program validates on the test split batched by the model's batch size.
    bpd = tuning.evaluate_bpd(model, validation, batch_size=model.config.batch_size)
    assert abs(bpd - best["val_bpd"]) < BPD_TOLERANCE


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_distributed_search_uses_both_workers(tmp_path):
    data = os.path.join(tmp_path, "images.npz")
    np.savez(data, train=_images(32, 0), test=_images(16, 1))
    space = os.path.join(tmp_path, "space.json")
    with open(space, "w") as file:
        json.dump({"learning_rate": [2e-3, 1e-2]}, file)
    command = _tune_command(tmp_path, data, "--max_trials=2", f"--search_space={space}")
    oracle = dict(KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=str(_free_port()))
    processes = {
        name: subprocess.Popen(
            command, cwd=tmp_path, env=_environment(KERASTUNER_TUNER_ID=name, **oracle),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for name in ("chief", "worker0", "worker1")
    }
    outputs = {}
    try:
        for name, process in processes.items():
            outputs[name] = process.communicate(timeout=900)[0]
            assert process.returncode == 0, outputs[name][-3000:]
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    for name in ("worker0", "worker1"):
        assert len(EPOCH_LINE.findall(outputs[name])) == 1, outputs[name][-3000:]
    assert not EPOCH_LINE.findall(outputs["chief"])
    with open(os.path.join(tmp_path, "p", "results.csv")) as file:
        rows = list(csv.DictReader(file))
    assert [row["status"] for row in rows] == ["COMPLETED", "COMPLETED"]
    assert all(math.isfinite(float(row["val_bpd"])) for row in rows)


def test_program_reports_a_bad_search_space_in_one_line(tmp_path, capsys):
    space = os.path.join(tmp_path, "space.json")
    with open(space, "w") as file:
        json.dump({"num_chanels_enc": [8, 16]}, file)
    status = tune.main(["nvae-tune", *_tune_args(tmp_path, "digits", f"--search_space={space}")])
    error = capsys.readouterr().err
    assert status == 1
    assert error.startswith("nvae-tune: error: ") and error.count("\n") == 1, error
    assert "unknown hyper-parameter name(s) ['num_chanels_enc']" in error
    assert "Traceback" not in error
    assert not os.path.exists(os.path.join(tmp_path, "p"))
