"""Keras' entry points after a bare `compile()`: `train_on_batch`, a custom loop over
`train_step`, `test_on_batch`, `evaluate`, `predict` and `fit` twice, and what `fit` prints
and logs.

The tests share one lean tiny model (each check is of what its own calls changed) so that its
train and test functions are traced once for the file; they run in file order.
"""

import csv
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from harness import lean_tiny
from harness import tiny_images
from keras_nvae import distributions
from keras_nvae.training import trainer
from keras_nvae.training.callbacks import ProgressBar
from keras_nvae.training.optimizers import NVAEAdamax

# The metrics of a training step besides those the progress line shows.
HIDDEN = ("nelbo", "recon", "kl_coeff", "spectral", "bn_reg", "active_groups", "nonfinite_steps")


@pytest.fixture(scope="module")
def model():
    model = lean_tiny()
    model.compile()
    return model


def _snapshot(model):
    return [(v, v.numpy().copy()) for v in model.variables]


def _restore(snapshot):
    for variable, value in snapshot:
        variable.assign(value)


def _weights(model):
    return [w.numpy().copy() for w in model.trainable_weights]


def _changed(before, model):
    return sum(not np.array_equal(a, b) for a, b in zip(before, _weights(model)))


def test_bare_compile_makes_the_default_optimizer_over_the_default_span(model):
    schedule = model.optimizer._learning_rate
    assert isinstance(model.optimizer, NVAEAdamax)
    assert schedule.total_steps == trainer.DEFAULT_TOTAL_STEPS == 10_000
    assert int(model.total_steps.numpy()) == trainer.DEFAULT_TOTAL_STEPS
    # Warm-up over warmup_epochs / epochs of the span, as the preset's schedule.
    c = model.config
    assert schedule.warmup_steps == round(10_000 * c.warmup_epochs / c.epochs)


def test_train_on_batch_takes_one_step_of_the_objective(model):
    x = tiny_images(4)
    state = _snapshot(model)
    expected = float(model.compute_objective(x, training=True)["loss"])
    _restore(state)  # The same noise, BN statistics and power iteration again.
    before = _weights(model)
    logs = model.train_on_batch(x, return_dict=True)
    assert math.isfinite(logs["loss"])
    np.testing.assert_allclose(logs["loss"], expected, rtol=1e-5)
    assert int(model.optimizer.iterations.numpy()) == int(model.global_step.numpy()) == 1
    # The learning-rate warm-up starts at 0, so the second step is the first to move weights.
    assert _changed(before, model) == 0
    flat = model.train_on_batch(x)  # Without return_dict: the values in `metrics` order.
    assert len(flat) == len(logs) and all(np.isfinite(flat))
    assert int(model.optimizer.iterations.numpy()) == 2
    assert _changed(before, model) == len(before)


def test_a_custom_loop_over_train_step(model):
    x = tf.constant(tiny_images(4, seed=1))
    step = int(model.global_step.numpy())
    before = _weights(model)
    for _ in range(2):
        logs = model.train_step(x)
    assert np.isfinite(float(logs["loss"])) and float(logs["loss"]) > 0
    assert int(model.optimizer.iterations.numpy()) == int(model.global_step.numpy()) == step + 2
    assert _changed(before, model) == len(before)


def test_test_on_batch_and_evaluate_change_no_weights(model):
    x = tiny_images(8, seed=2)
    state = _snapshot(model)
    out = model(x[:4], training=False)
    nelbo = float(np.mean(out["recon_nll"].numpy() + out["kl"].numpy().sum(axis=1)))
    _restore(state)  # The same posterior noise again.
    logs = model.test_on_batch(x[:4], return_dict=True)
    np.testing.assert_allclose([logs["loss"], logs["nelbo"]], [nelbo, nelbo], rtol=1e-5)
    results = model.evaluate(x, batch_size=4, return_dict=True, verbose=0)
    np.testing.assert_allclose(
        results["bpd"],
        float(distributions.nats_to_bits_per_dim(results["nelbo"], model.config.num_dims)),
        rtol=1e-6,
    )
    changed = [v.path for v, value in state if "seed_generator" not in v.path
               and not np.array_equal(v.numpy(), value)]
    assert not changed


def test_predict_returns_the_forward_pass(model):
    x = tiny_images(6, seed=3)
    out = model.predict(x, batch_size=4, verbose=0)
    assert out["kl"].shape == (6, model.num_groups) and out["recon_nll"].shape == (6,)
    assert np.all(np.isfinite(out["recon_nll"])) and np.all(out["kl"] >= 0)
    # The reconstruction term is the likelihood of each image: ~ -log p(x|z) > 0 nats.
    assert np.all(out["recon_nll"] > 0)


def _epoch_lines(text):
    return [line for line in text.splitlines() if "/step" in line]


def test_fit_twice_spans_the_first_fit_and_prints_a_short_line(model, tmp_path, capsys):
    x = tiny_images(8, seed=4)
    trained = int(model.global_step.numpy())
    optimizer = model.optimizer
    csv_path = str(tmp_path / "history.csv")
    callbacks = [
        keras.callbacks.CSVLogger(csv_path),
        keras.callbacks.TensorBoard(str(tmp_path / "logs"), write_graph=False),
    ]
    capsys.readouterr()
    model.fit(x, validation_data=x, batch_size=4, epochs=2, verbose=2, callbacks=callbacks)
    lines = _epoch_lines(capsys.readouterr().out)
    # The schedules end with the first fit: the steps so far plus 2 epochs x 2 steps.
    assert model.optimizer is optimizer
    assert optimizer._learning_rate.total_steps == trained + 4
    assert int(model.total_steps.numpy()) == trained + 4
    assert int(optimizer.iterations.numpy()) == trained + 4

    assert len(lines) == 2 and all(len(line) <= 160 for line in lines), lines
    for name in ("loss", "bpd", "kl", "val_loss", "val_bpd", "val_kl"):
        assert f" {name}: " in lines[-1]
    assert not any(name in lines[-1] for name in HIDDEN)
    # Every metric still reaches the CSV and TensorBoard.
    with open(csv_path) as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 2
    for name in HIDDEN:
        assert math.isfinite(float(rows[-1][name])), name
    assert math.isfinite(float(rows[-1]["val_active_groups"]))
    events = tf.data.TFRecordDataset(
        [os.path.join(tmp_path, "logs", "train", f)
         for f in os.listdir(tmp_path / "logs" / "train")]
    )
    tags = {
        value.tag
        for record in events
        for value in tf.compat.v1.Event.FromString(record.numpy()).summary.value
    }
    assert {f"epoch_{name}" for name in HIDDEN} <= tags

    # A second fit continues the same schedules; ProgressBar("all") shows every metric.
    model.fit(x, batch_size=4, epochs=1, verbose=2, callbacks=[ProgressBar("all")])
    (line,) = _epoch_lines(capsys.readouterr().out)
    assert all(f" {name}: " in line for name in HIDDEN)
    assert model.optimizer is optimizer
    assert optimizer._learning_rate.total_steps == trained + 4
    assert int(optimizer.iterations.numpy()) == int(model.global_step.numpy()) == trained + 6


def test_compile_with_total_steps_fixes_the_span():
    model = lean_tiny()
    model.compile(total_steps=50, steps_per_epoch=5)
    schedule = model.optimizer._learning_rate
    assert (schedule.total_steps, schedule.steps_per_epoch) == (50, 5)
    assert int(model.total_steps.numpy()) == 50
    assert not model._schedule_pending


def test_progress_bar_rejects_a_single_name():
    with pytest.raises(ValueError, match="'all' or a list"):
        ProgressBar("bpd")
