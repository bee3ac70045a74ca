"""A step with a non-finite loss or gradient changes nothing, is counted, and too many stop fit."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from harness import lean_tiny, tiny_images

from keras_nvae import NVAE
from keras_nvae.training.step_guard import NonFiniteTrainingError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "scripts", "nonfinite_mirrored.py")


def training_state(model):
    """Every variable a step may change, by path: weights, BN statistics, power-iteration
    vectors, counters and the optimizer's variables (not the noise seed, which advances)."""
    state = {
        v.path.removeprefix(model.name + "/"): keras.ops.convert_to_numpy(v).copy()
        for v in model.variables
        if "seed_generator_state" not in v.path
    }
    for v in model.optimizer.variables:
        state["optimizer/" + v.path] = keras.ops.convert_to_numpy(v).copy()
    return state


def changed(before, after, ignore=()):
    """Paths whose value differs (bitwise; NaN never equals) between two `training_state`s."""
    assert before.keys() == after.keys()
    return sorted(
        path for path in before
        if path not in ignore and not np.array_equal(before[path], after[path])
    )


def nan_images(n=8, bad=(0,)):
    """Float images in [0, 1] whose images `bad` have one NaN pixel."""
    images = tiny_images(n).astype("float32") / 255.0
    for index in bad:
        images[index, 3, 4, 1] = np.nan
    return images


def trained_tiny(**overrides):
    """A lean tiny NVAE after one good step (slots, BN statistics and power iteration moved)."""
    keras.utils.set_random_seed(0)
    model = lean_tiny(**overrides)
    model.compile(total_steps=20)
    model.fit(tiny_images(), batch_size=8, epochs=1, verbose=0)
    return model


def guard_counts(model):
    guard = model.step_guard
    return {
        name: int(keras.ops.convert_to_numpy(getattr(guard, name)))
        for name in ("nonfinite_steps", "consecutive_nonfinite", "first_nonfinite")
    }


COUNTERS = [
    "step_guard/consecutive_nonfinite", "step_guard/first_nonfinite", "step_guard/nonfinite_steps"
]
POISON = tf.Variable(0.0, trainable=False)
POISONED_WEIGHT = 7


@tf.custom_gradient
def _nan_gradient(x, poisoned):
    """Zeros shaped like `x`, whose gradient for `x` is NaN while `poisoned` > 0."""

    def grad(upstream):
        return upstream * tf.where(poisoned > 0, float("nan"), 1.0), None

    return tf.zeros_like(x), grad


class PoisonedGradient(NVAE):
    """NVAE whose loss gains a zero with a NaN gradient for one weight while `POISON` > 0."""

    def compute_objective(self, images, **kwargs):
        terms = super().compute_objective(images, **kwargs)
        target = self.trainable_variables[POISONED_WEIGHT]
        zero = tf.reduce_sum(_nan_gradient(target, tf.convert_to_tensor(POISON)))
        return {**terms, "loss": terms["loss"] + zero}


@pytest.fixture(scope="module")
def model():
    """One lean tiny model (one trace of the train step) for the float32 tests of this file.

    Each test starts with a good step, which ends any run of non-finite steps.
    """
    keras.utils.set_random_seed(0)
    model = PoisonedGradient(lean_tiny(max_consecutive_nonfinite=2).config)
    model.compile(total_steps=100)
    return model


def good_step(model, seed=0):
    model.fit(tiny_images(seed=seed), batch_size=8, epochs=1, verbose=0)
    assert guard_counts(model)["consecutive_nonfinite"] == 0


def test_nan_batch_changes_nothing_is_counted_and_named(model):
    good_step(model)
    skipped = guard_counts(model)["nonfinite_steps"]
    before = training_state(model)
    history = model.fit(nan_images(), batch_size=8, epochs=1, verbose=0)
    after = training_state(model)
    # Only the guard's counters moved: no weight, slot, step counter, BN statistic or
    # power-iteration vector.
    assert changed(before, after) == COUNTERS
    assert guard_counts(model) == {
        "nonfinite_steps": skipped + 1, "consecutive_nonfinite": 1, "first_nonfinite": 0
    }
    assert history.history["nonfinite_steps"] == [skipped + 1.0]
    # The skipped step left no NaN in the epoch's metrics.
    assert np.isfinite(history.history["loss"][0])
    source, advice = model.describe_nonfinite()
    assert source.startswith("the input images") and "NaN" in advice

    # A good step afterwards trains and ends the run of non-finite steps.
    good_step(model, seed=1)
    moved = changed(after, training_state(model))
    assert "global_step" in moved and len(moved) > 50
    assert guard_counts(model)["nonfinite_steps"] == skipped + 1


def test_consecutive_nonfinite_steps_stop_fit_and_keep_the_last_checkpoint(model, tmp_path):
    checkpoint = str(tmp_path / "last.weights.h5")
    save = keras.callbacks.ModelCheckpoint(checkpoint, save_weights_only=True)
    model.fit(tiny_images(seed=2), batch_size=8, epochs=1, verbose=0, callbacks=[save])
    saved = open(checkpoint, "rb").read()
    step = int(model.global_step.numpy())
    before = training_state(model)
    data = np.concatenate([nan_images(), nan_images(), tiny_images(seed=3) / 255.0])
    with pytest.raises(NonFiniteTrainingError) as info:
        model.fit(data, batch_size=8, epochs=1, verbose=0, callbacks=[save])
    message = str(info.value)
    assert "2 steps in a row" in message and "max_consecutive_nonfinite=2" in message
    assert "the input images" in message and f"global_step {step}" in message
    # The error came before the third (good) batch and before any save.
    assert changed(before, training_state(model), ignore=COUNTERS) == []
    assert open(checkpoint, "rb").read() == saved


def test_nonfinite_gradient_with_finite_loss_is_skipped_and_names_the_weight(model):
    good_step(model)
    POISON.assign(1.0)
    try:
        before = training_state(model)
        history = model.fit(tiny_images(seed=1), batch_size=8, epochs=1, verbose=0)
    finally:
        POISON.assign(0.0)
    assert changed(before, training_state(model)) == COUNTERS
    assert np.isfinite(history.history["loss"][0])
    source, _ = model.describe_nonfinite()
    assert source == f"the gradient of {model.trainable_variables[POISONED_WEIGHT].path}"


@pytest.mark.slow
def test_mixed_float16_counts_nan_batches_but_not_loss_scale_overflows():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = trained_tiny(max_consecutive_nonfinite=3)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    optimizer = model.optimizer
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    before = training_state(model)
    model.fit(nan_images(), batch_size=8, epochs=1, verbose=0)
    # Nothing changed, the loss scale and its counter included.
    assert changed(before, training_state(model)) == COUNTERS
    assert guard_counts(model)["first_nonfinite"] == 0

    # A scale that makes the float16 backward pass overflow: the loss-scale optimizer
    # skips the update and halves the scale itself, and the guard does not count it.
    optimizer.dynamic_scale.assign(2.0**40)
    weights = [keras.ops.convert_to_numpy(v).copy() for v in model.trainable_variables]
    step = int(model.global_step.numpy())
    model.fit(tiny_images(seed=1), batch_size=8, epochs=1, verbose=0)
    assert float(optimizer.dynamic_scale.numpy()) == 2.0**39
    assert all(
        np.array_equal(w, keras.ops.convert_to_numpy(v))
        for w, v in zip(weights, model.trainable_variables)
    )
    assert guard_counts(model)["nonfinite_steps"] == 1
    assert guard_counts(model)["consecutive_nonfinite"] == 0
    assert int(model.global_step.numpy()) == step + 1


@pytest.mark.slow
def test_mirrored_replicas_skip_together():
    result = subprocess.run(
        [sys.executable, SCRIPT], capture_output=True, text=True, timeout=900,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    values = json.loads(result.stdout.strip().splitlines()[-1])
    # Only replica 0's half of the batch had a NaN pixel; the replicas summed their
    # checks, so both skipped: no copy of any variable changed on either device.
    assert values["changed"] == COUNTERS
    assert values["nonfinite_steps"] == 1 and values["first_nonfinite"] == 0
    assert values["replicas_equal"]
    # A good batch afterwards moves the weights again.
    assert values["moved_after_good_step"] > 50
