"""Tests for the command-line programs (trainers/): in-process on CI-sized settings, and
as the installed commands run them (`absl.app`, in a subprocess) where that is cheap."""

import contextlib
import importlib.metadata
import io
import json
import math
import os
import re
import subprocess
import sys

import keras
import pytest
import tensorflow as tf

from keras_nvae.cli import convert
from keras_nvae.cli import evaluate
from keras_nvae.cli import parity
from keras_nvae.cli import sample
from keras_nvae.cli import train
from keras_nvae.cli import tune

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = {
    "nvae-train": train,
    "nvae-evaluate": evaluate,
    "nvae-sample": sample,
    "nvae-convert": convert,
    "nvae-tune": tune,
    "nvae-parity": parity,
}

CI_FLAGS = [
    "--max_train_batches=2",
    "--max_eval_batches=1",
    "--eval_samples=2",
]
FINAL_LINE = re.compile(
    r"^test bits/dim: (\d+\.\d+) \(IW, K=2; \d+\.\d+ nats/image\); NELBO bits/dim: (\d+\.\d+)$"
)


class _Interrupt(keras.callbacks.Callback):
    """Stops training with an error when epoch 2 starts (epoch 1 is complete)."""

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("simulated interruption")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The README's training command, CI-sized: interrupted in epoch 2, then rerun.

    Returns:
        (output directory, stdout of the completed run).
    """
    output_dir = str(tmp_path_factory.mktemp("run"))
    argv = [
        "train", "--epochs=2", "--pictures_every_n_epochs=2", f"--output_dir={output_dir}",
        *CI_FLAGS,
    ]
    make_callbacks = train.make_callbacks
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            train,
            "make_callbacks",
            lambda directory: make_callbacks(directory) + [_Interrupt()],
        )
        with pytest.raises(RuntimeError, match="simulated interruption"):
            train.main(argv)
    assert os.path.isdir(os.path.join(output_dir, "checkpoints"))
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert train.main(argv) == 0
    return output_dir, stdout.getvalue()


def _png(path):
    return tf.io.decode_png(tf.io.read_file(path)).numpy()


def test_train_writes_outputs_and_reports(run):
    output_dir, stdout = run
    lines = [line for line in stdout.splitlines() if line.strip()]
    match = FINAL_LINE.match(lines[-1])
    assert match, lines[-1]
    assert all(math.isfinite(float(value)) for value in match.groups())

    # 8x8 grid of 8x8 digits upscaled x4 to 32x32 cells, 2-pixel borders.
    assert _png(os.path.join(output_dir, "samples.png")).shape == (274, 274, 1)
    # Rows: 16 inputs over their 16 reconstructions.
    assert _png(os.path.join(output_dir, "reconstructions.png")).shape == (70, 546, 1)

    with open(os.path.join(output_dir, "metrics.json")) as file:
        metrics = json.load(file)
    test = metrics["test"]
    assert math.isfinite(test["iw_bpd"]) and math.isfinite(test["nelbo_bpd"])
    assert test["iw_num_samples"] == 2 and test["num_images"] == 64
    assert f"{test['iw_bpd']:.4f}" == match.group(1)
    assert metrics["config"]["epochs"] == 2
    assert os.path.isfile(os.path.join(output_dir, "model.keras"))
    assert os.listdir(os.path.join(output_dir, "logs"))


def test_train_writes_pictures_to_tensorboard(run):
    from tensorboard.backend.event_processing import event_accumulator

    output_dir, _ = run
    events = event_accumulator.EventAccumulator(os.path.join(output_dir, "logs", "latents"))
    events.Reload()
    tags = events.Tags()["tensors"]
    for tag in ("reconstructions", "samples/temperature_0.6", "samples/temperature_1"):
        (event,) = events.Tensors(tag)  # once, after epoch 2
        grid = tf.io.decode_png(tf.make_ndarray(event.tensor_proto)[2]).numpy()
        assert event.step == 2 and grid.shape[-1] == 1, tag
    # The digits preset's 3 groups: a KL scalar each, the histogram, active groups.
    expected = {"kl/group_0", "kl/group_1", "kl/group_2", "kl/per_group", "kl/active_groups"}
    assert expected <= set(tags)


def test_train_resumes_after_interruption(run):
    output_dir, _ = run
    with open(os.path.join(output_dir, "metrics.json")) as file:
        metrics = json.load(file)
    # The rerun trained only the missing epoch, continuing the restored state:
    # 2 epochs x 2 steps in total, the step counter and epoch 1's history restored.
    assert len(metrics["history"]["loss"]) == 2
    assert metrics["global_step"] == 4
    with open(os.path.join(output_dir, "train_steps.jsonl")) as file:
        steps = [json.loads(line) for line in file]
    assert [(record["epoch"], record["step"]) for record in steps] == [
        (0, 1), (0, 2), (1, 3), (1, 4)
    ]
    # A finished run removes its saved state, so the next run starts afresh.
    assert not os.path.exists(os.path.join(output_dir, "checkpoints"))


def test_evaluate_program(run, capsys):
    output_dir, _ = run
    model = os.path.join(output_dir, "model.keras")
    argv = ["evaluate", f"--model={model}", "--num_samples=2", "--max_batches=1"]
    assert evaluate.main(argv) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.match(r"^test bits/dim: \d+\.\d+ \(IW, K=2; .* 64 images\); NELBO bits/dim: ", line)



def test_evaluate_program_writes_anomaly_scores(run, tmp_path, capsys):
    import numpy as np

    from keras_nvae import data
    from keras_nvae.inference import evaluation

    output_dir, _ = run
    model_path = os.path.join(output_dir, "model.keras")
    output = str(tmp_path / "scores.csv")
    argv = [
        "evaluate", f"--model={model_path}", "--mode=score", "--num_samples=2",
        "--max_batches=1", f"--output={output}", "--seed=3",
    ]
    assert evaluate.main(argv) == 0
    assert "64 anomaly scores" in capsys.readouterr().out
    with open(output) as file:
        assert file.readline().strip() == "index,bits_per_dim"
    table = np.loadtxt(output, delimiter=",", skiprows=1)
    np.testing.assert_array_equal(table[:, 0], np.arange(64))
    # The library's scores of the same batch (the test split's first 64 digits) and seed.
    model = keras.saving.load_model(model_path)
    expected = evaluation.scores(model, data.digits_arrays("test")[:64], 2, batch_size=64, seed=3)
    np.testing.assert_allclose(table[:, 1], expected, rtol=1e-5)


def test_evaluate_program_fid_needs_the_inception_weights(run, tmp_path, capsys):
    output_dir, _ = run
    argv = [
        "evaluate", f"--model={os.path.join(output_dir, 'model.keras')}", "--mode=fid",
        f"--inception_weights={tmp_path / 'none.h5'}",
    ]
    line = _error(evaluate.main, argv, capsys)
    assert line.startswith("evaluate: error: --inception_weights: ") and "none.h5" in line, line
    assert "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5" in line

def _sample(run, tmp_path, *flags):
    output_dir, _ = run
    argv = [
        "sample",
        f"--model={os.path.join(output_dir, 'model.keras')}",
        f"--output_dir={tmp_path}",
        "--seed=3",
        *flags,
    ]
    assert sample.main(argv) == 0
    with open(tmp_path / "sample.json") as file:
        record = json.load(file)
    return _png(str(tmp_path / record["image"])), record


def test_sample_program(run, tmp_path):
    grid, record = _sample(run, tmp_path, "--num=6", "--readjust_bn_steps=2", "--temperature=0.6")
    # 6 samples in rows of ceil(sqrt(6)) = 3: 2 x 3 cells of 32 + 2 pixels.
    assert grid.shape == (70, 104, 1)
    assert record["mode"] == "sample" and record["temperature"] == 0.6 and record["seed"] == 3
    again, _ = _sample(run, tmp_path, "--num=6", "--readjust_bn_steps=2", "--temperature=0.6")
    assert (grid == again).all()


def test_sample_program_reconstruct_and_interpolate(run, tmp_path):
    # The digits preset has 3 groups (2 scales, [2, 1]): rows k = 0, 1, 2, 3 below the inputs.
    grid, record = _sample(run, tmp_path, "--mode=reconstruct", "--num=3", "--temperature=0.5")
    assert record["rows"] == ["input", 0, 1, 2, 3] and record["split"] == "test"
    assert grid.shape == (5 * 34 + 2, 3 * 34 + 2, 1)
    grid, record = _sample(
        run,
        tmp_path,
        "--mode=interpolate",
        "--num=2",
        "--num_steps=4",
        "--groups=0,1",
        "--interpolation=spherical",
        "--temperature=0.7,0.6,0.5",
    )
    assert record["groups"] == [0, 1] and record["temperature"] == [0.7, 0.6, 0.5]
    # Rows: 2 pairs; columns: first image, 4 path images, second image.
    assert grid.shape == (2 * 34 + 2, 6 * 34 + 2, 1)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--mode=reconstruct", "--num_posterior_groups=0,9"], "`num_posterior_groups` must be"),
        (["--temperature=0.7,0.7"], "list of 3 floats"),
        (["--temperature=hot"], "--temperature expects comma-separated numbers"),
        (["--mode=interpolate", "--groups=7"], "`groups` must be None"),
    ],
)
def test_sample_program_user_errors(run, flags, message, capsys):
    output_dir, _ = run
    model = os.path.join(output_dir, "model.keras")
    line = _error(sample.main, ["sample", f"--model={model}", "--num=2", *flags], capsys)
    assert line.startswith("sample: error: ") and message in line, line


def _error(main, argv, capsys):
    assert main(argv) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--preset=nope"], "Unknown NVAE preset 'nope'"),
        (["--override=num_channels=4"], "unknown NVAEConfig field 'num_channels'"),
        (["--override", "num_channels_enc"], "expects key=value"),
        (["--override=num_channels_enc=0"], "num_channels_enc must be an integer >= 1"),
        (["--epochs=0"], "epochs"),
        (["--mixed_precision=float8"], "mixed_precision"),
        (["--temperature=0"], "--temperature must be > 0"),
        (["--dataset=no_such_source"], "Unknown data source 'no_such_source'"),
        (["--preset=tiny"], "of shape (8, 8, 1), but the model expects (16, 16, 3)"),
        (["--distribute=multi_worker"], "TF_CONFIG"),
        (["--jit_compile", "--distribute=mirrored"], "--jit_compile cannot be combined"),
        (["extra"], "unexpected arguments ['extra']"),
    ],
)
def test_train_user_errors(flags, message, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    line = _error(train.main, ["train", f"--output_dir={tmp_path}", *flags], capsys)
    assert line.startswith("train: error: ") and message in line, line


def test_train_unprepared_tfds_dataset(tmp_path, capsys):
    argv = ["train", "--dataset=mnist", f"--data_dir={tmp_path}", f"--output_dir={tmp_path}"]
    line = _error(train.main, argv, capsys)
    assert "'mnist' is not prepared" in line and "tfds build mnist" in line, line


def test_model_file_errors(tmp_path, capsys):
    missing = str(tmp_path / "missing.keras")
    line = _error(evaluate.main, ["evaluate", f"--model={missing}"], capsys)
    assert "does not exist" in line
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"not a zip file")
    line = _error(sample.main, ["sample", f"--model={corrupt}"], capsys)
    assert "could not load the model" in line
    line = _error(sample.main, ["sample"], capsys)
    assert "--model is required" in line


def test_model_file_running_code_is_refused(tmp_path, capsys):
    # A .keras file whose config holds a Python lambda (code) that creates a file when called.
    marker = tmp_path / "created_by_the_model_file"
    function = eval(f"lambda x: (__import__('pathlib').Path({str(marker)!r}).touch(), x)[1]")
    keras.Sequential([keras.Input((2,)), keras.layers.Lambda(function)]).save(
        tmp_path / "lambda.keras"
    )
    marker.unlink()  # building the model called the lambda
    path = str(tmp_path / "lambda.keras")
    line = _error(evaluate.main, ["evaluate", f"--model={path}"], capsys)
    assert "could not load the model" in line and "Lambda" in line, line
    assert not marker.exists()
    # The code is live: loading outside Keras' safe mode runs it.
    keras.saving.load_model(path, safe_mode=False)
    assert marker.exists()


def test_installed_commands():
    distribution = importlib.metadata.distribution("keras_nvae")
    scripts = {
        entry.name: entry for entry in distribution.entry_points if entry.group == "console_scripts"
    }
    reinstall = "stale install of keras_nvae: run `pip install -e .` again"
    assert sorted(scripts) == sorted(COMMANDS), reinstall
    for name, program in COMMANDS.items():
        assert scripts[name].load() is program.run, name
    assert "trainers" in distribution.read_text("top_level.txt").split(), reinstall


def _run_module(program, *args):
    """`python -m trainers.<program> args` from the repository root, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", f"trainers.{program}", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "program, flag, message",
    [
        ("train", "--epochs=0", "epochs"),  # the program's own flag
        ("sample", "--verbosity=loud", "verbosity"),  # absl's logging flag
        ("evaluate", "--no_such_flag", "no_such_flag"),
    ],
)
def test_command_line_errors_exit_1_with_one_line(program, flag, message):
    result = _run_module(program, flag)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{program}: error: ") and message in lines[0], lines[0]


def test_command_help_lists_the_programs_flags():
    result = _run_module("convert", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Convert an official NVAE checkpoint")
    assert "--checkpoint" in result.stdout and "--official_dmol" in result.stdout
    full = _run_module("convert", "--helpfull")
    assert full.returncode == 0 and "--verbosity" in full.stdout, full.stderr
