"""The pytest fixtures shared by the tests; the helpers they import are in `harness.py`."""

import numpy as np
import pytest
import tensorflow as tf

from keras_nvae import NVAE

# Grappler's graph rewrites are off in the test processes. The tests trace many small graphs and
# run each for a few steps, so optimising every graph cost more than it saved: the first `fit` of
# the `tiny` preset took 42 s with them and 27 s without. The programs that tests start as
# subprocesses (`nvae-train` and the other trainers) keep them, as users run them.
tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})


@pytest.fixture(scope="session")
def _shared_tiny():
    return NVAE.from_preset("tiny")


@pytest.fixture
def tiny(_shared_tiny):
    """The `tiny` preset NVAE, built once per session and shared by every test that asks for it.

    Tests may call it and advance its noise seed but must not change its weights (training, a
    train-mode pass, BN re-adjustment): such tests build their own model. A test that changes a
    weight fails at teardown, naming the weights.
    """
    before = [w.numpy().copy() for w in _shared_tiny.weights]
    yield _shared_tiny
    changed = [
        w.path for w, value in zip(_shared_tiny.weights, before)
        if not np.array_equal(w.numpy(), value)
    ]
    assert not changed, (
        f"The test changed weights of the shared `tiny` model: {changed[:5]}. "
        "Build a fresh NVAE.from_preset('tiny') in tests that train or re-adjust a model."
    )
