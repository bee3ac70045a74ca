"""The shared test harness: tolerances, tiny inputs and models, and the official references.

Test files import the constants and helpers by name (`from conftest import PARITY_RTOL`); the
pytest fixtures below need no import.

The reference fixtures `fixtures/nvae_ref_<name>_tiny.npz` hold a tiny official PyTorch NVAE: its
training flags (`config_json`), its weights under their PyTorch names and layouts (`param/...`),
an input batch (`x_uint8`), the per-group noise it drew (`<mode>/eps_NN`) and everything it computed
from them (`eval/...`, `train/...`, `sample/...`, `loss/...`).
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_nvae import NVAE
from keras_nvae.official import convert
from keras_nvae.official.parity import relative_error

# Grappler's graph rewrites are off in the test processes. The tests trace many small graphs and
# run each for a few steps, so optimising every graph cost more than it saved: the first `fit` of
# the `tiny` preset took 42 s with them and 27 s without. The programs that tests start as
# subprocesses (`nvae-train` and the other trainers) keep them, as users run them.
tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})

FIXTURE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
REFERENCE_NAMES = ("mnist", "cifar")
# The forward-pass outputs the references record, under `eval/` and `train/`.
OUTPUT_KEYS = ("logits", "kl", "log_q", "log_p", "recon_nll")

# ------------------------------------------------------------------ tolerances
# Ours against an official reference array, as max|ours - ref| / max|ref|: ten times the float32
# noise of the reference itself (its outputs re-run in float64 moved by <= 1e-6 of each array's
# largest magnitude), so a float32 port that only sums in another order passes while a wrong layout,
# tensor or constant lands orders of magnitude above it.
PARITY_RTOL = 1e-5
# One float32 computation run two ways (eagerly, as a tf.function or SavedModel graph, under XLA):
# only the order of reductions differs. Measured <= 1e-6 relative on the tiny model; ten times that.
REORDERED_RTOL = 1e-5


# --------------------------------------------------------------------- inputs
def tiny_images(n=8, seed=0):
    """`n` random uint8 images of the `tiny` preset's shape (16, 16, 3)."""
    return np.random.RandomState(seed).randint(0, 256, (n, 16, 16, 3)).astype("uint8")


def fixed_noise(model, n, seed=1):
    """Standard-normal latent noise for `n` images: one float32 array per group of `model`."""
    rng = np.random.RandomState(seed)
    return [rng.randn(n, *shape).astype("float32") for shape in model.latent_shapes]


def noise_seed_state(model):
    """The state variable of the seed generator that draws `model`'s latent noise.

    Works on an `NVAE` and on the SavedModel it exports: assigning the same value to both makes
    their next random draws the same.
    """
    states = [v for v in model.variables if "seed_generator_state" in v.name]
    assert len(states) == 1, [v.name for v in states]
    return states[0]


# ---------------------------------------------------------------------- state
def model_state(model):
    """Copies of every variable of `model` and, once built, of its optimizer.

    That is the weights, BN statistics, power-iteration vectors, seed-generator state, step
    counters, metric accumulators and optimizer slots, as a list of (path, NumPy copy).
    """
    variables = list(model.variables)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and optimizer.built:
        variables += list(optimizer.variables)
    return [(v.path, np.array(v.numpy(), copy=True)) for v in variables]


def assert_state_unchanged(model, before):
    """Asserts that `model_state(model)` still equals `before` (a NaN equals a NaN).

    Fails naming the variables that were added, removed or changed.
    """
    after = model_state(model)
    paths, old_paths = [p for p, _ in after], [p for p, _ in before]
    assert paths == old_paths, (
        f"Variables added: {sorted(set(paths) - set(old_paths))[:5]}, "
        f"removed: {sorted(set(old_paths) - set(paths))[:5]}."
    )
    changed = [
        path
        for (path, value), (_, old) in zip(after, before)
        if not np.array_equal(value, old, equal_nan=value.dtype.kind in "fc")
    ]
    assert not changed, f"{len(changed)} variable(s) changed: {changed[:5]}"


# --------------------------------------------------------------------- models
# `tiny` with one latent scale and no flows, for tests of what is done with a network (training
# steps, schedules, guards, saving, distribution, programs) rather than of the network itself:
# its first `fit` traces in 15.6 s against the full `tiny`'s 39.8 s.
LEAN_TINY = {"num_latent_scales": 1, "num_flows": 0}


def lean_tiny(**overrides):
    """A fresh `tiny` NVAE with the `LEAN_TINY` overrides (and `overrides`)."""
    return NVAE.from_preset("tiny", **{**LEAN_TINY, **overrides})


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


# ----------------------------------------------------------------- references
class Reference:
    """One official reference fixture: its flags, weights and recorded arrays.

    Args:
        name: one of `REFERENCE_NAMES`.

    Example:
    ```python
    ref = Reference("mnist")
    model = ref.build()
    out = model(ref["x_uint8"], training=False, noise=ref.noise("eval"))
    assert_matches_reference(out["kl"], ref["eval/kl"], "kl")
    ```
    """

    def __init__(self, name):
        path = os.path.join(FIXTURE_DIR, f"nvae_ref_{name}_tiny.npz")
        with np.load(path) as data:
            self.arrays = {key: data[key] for key in data.files}
        self.name = name
        self.num_groups = int(self.arrays["eval/num_groups"])

    def __getitem__(self, key):
        return self.arrays[key]

    @property
    def args(self):
        """The official train.py flags, as a fresh dict."""
        return json.loads(str(self.arrays["config_json"]))

    @property
    def state_dict(self):
        """The official weights and buffers by PyTorch name, as a fresh dict."""
        prefix = "param/"
        return {
            key[len(prefix):]: value
            for key, value in self.arrays.items()
            if key.startswith(prefix)
        }

    def noise(self, mode):
        """The per-group noise the reference drew in `mode` ("eval", "train" or "sample")."""
        return [self.arrays[f"{mode}/eps_{i:02d}"] for i in range(self.num_groups)]

    def build(self, seed=0, **overrides):
        """A fresh NVAE with the reference weights (official_dmol unless overridden).

        Args:
            seed: seeds the random initial state (weights before loading, power-iteration
                vectors).
            **overrides: `NVAEConfig` fields to change.

        Returns:
            The loaded `NVAE`.
        """
        overrides.setdefault("official_dmol", True)
        keras.utils.set_random_seed(seed)
        model = NVAE(convert.config_from_official_args(self.args, **overrides))
        return convert.load_official_state_dict(model, self.state_dict)


def assert_matches_reference(actual, expected, what):
    """Asserts `relative_error(actual, expected) <= PARITY_RTOL`, naming `what` on failure."""
    error = relative_error(actual, expected)
    assert error <= PARITY_RTOL, f"{what}: max abs err / max abs = {error:.3g} > {PARITY_RTOL}"

