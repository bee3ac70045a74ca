"""The shared test harness: tolerances, tiny inputs and models, the official references, and
`TestCase`, whose `run_layer_test`, `run_serialization_test` and `run_preset_test` are the checks
every layer, every serialisable object and every preset gets.

Test files import what they use by name (`from harness import PARITY_RTOL, TestCase`); the pytest
fixtures of `conftest.py` need no import.

The reference fixtures `fixtures/nvae_ref_<name>_tiny.npz` hold a tiny official PyTorch NVAE: its
training flags (`config_json`), its weights under their PyTorch names and layouts (`param/...`),
an input batch (`x_uint8`), the per-group noise it drew (`<mode>/eps_NN`) and everything it computed
from them (`eval/...`, `train/...`, `sample/...`, `loss/...`).
"""

import json
import os

import keras
import numpy as np
import tensorflow as tf

from keras_nvae import NVAE
from keras_nvae.official import convert
from keras_nvae.official.parity import relative_error
from keras_nvae.training.checkpoint_store import state_variables

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
    """Copies of `state_variables(model)`: every variable of `model` and of its optimizer.

    That is the weights, BN statistics, power-iteration vectors, seed-generator state, step
    counters, metric accumulators and optimizer slots, as a list of (path, NumPy copy).
    """
    return [(v.path, np.array(v.numpy(), copy=True)) for v in state_variables(model)]


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


def loss_and_gradients(model, images, noise):
    """The training-mode loss and its gradients for all trainable variables, with fixed noise.

    One `tf.function` step (batch-norm statistics move once, as in training).
    """

    @tf.function
    def step(images, eps):
        with tf.GradientTape() as tape:
            terms = model.compute_objective(images, training=True, noise=eps)
        return terms["loss"], tape.gradient(terms["loss"], model.trainable_variables)

    return step(tf.constant(images), [tf.constant(n) for n in noise])


def assert_matches_reference(actual, expected, what):
    """Asserts `relative_error(actual, expected) <= PARITY_RTOL`, naming `what` on failure."""
    error = relative_error(actual, expected)
    assert error <= PARITY_RTOL, f"{what}: max abs err / max abs = {error:.3g} > {PARITY_RTOL}"


# ------------------------------------------------------------------ test case
class TestCase:
    """The checks every layer, serialisable object and preset of keras_nvae gets.

    Test classes subclass it and call its methods, as in keras-hub:

    ```python
    class SqueezeExcitationTest(TestCase):
        def test_layer_basics(self):
            self.run_layer_test(
                SqueezeExcitation,
                init_kwargs={},
                input_data=np.ones((2, 4, 4, 8), "float32"),
                expected_output_shape=(2, 4, 4, 8),
            )
    ```
    """

    def run_serialization_test(self, instance):
        """Asserts that `instance` survives `get_config`/`from_config` and Keras serialisation.

        Args:
            instance: a layer, model, optimizer or schedule of keras_nvae.

        Returns:
            The object rebuilt by `keras.saving.deserialize_keras_object`.
        """
        config = instance.get_config()
        clone = type(instance).from_config(config)
        assert clone.get_config() == config
        restored = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(instance)
        )
        assert type(restored) is type(instance)
        assert restored.get_config() == config
        return restored

    def run_layer_test(
        self,
        layer_cls,
        init_kwargs,
        input_data,
        expected_output_shape,
        expected_num_trainable_weights=None,
        call_kwargs=None,
    ):
        """Builds `layer_cls(**init_kwargs)`, calls it and checks it the way every layer must pass.

        The output has the expected shape, the layer has the expected number of trainable
        weights, it passes `run_serialization_test`, and a layer rebuilt from its config with
        its weights gives the same output.

        Args:
            layer_cls: the layer class.
            init_kwargs: its constructor arguments.
            input_data: the input of the call.
            expected_output_shape: the shape of the output (a tuple).
            expected_num_trainable_weights: if given, `len(layer.trainable_weights)`.
            call_kwargs: other arguments of the call (default `training=False`).

        Returns:
            `(layer, output)`.
        """
        call_kwargs = {"training": False, **(call_kwargs or {})}
        layer = layer_cls(**init_kwargs)
        output = keras.ops.convert_to_numpy(layer(input_data, **call_kwargs))
        assert tuple(output.shape) == tuple(expected_output_shape)
        if expected_num_trainable_weights is not None:
            assert len(layer.trainable_weights) == expected_num_trainable_weights
        self.run_serialization_test(layer)
        clone = layer_cls.from_config(layer.get_config())
        clone(input_data, **call_kwargs)
        clone.set_weights(layer.get_weights())
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(clone(input_data, **call_kwargs)), output
        )
        return layer, output

    def run_preset_test(self, preset, input_data, expected_output_shapes, init_kwargs=None):
        """Builds `NVAE.from_preset(preset, **init_kwargs)` and checks one call and its config.

        Args:
            preset: a preset name.
            input_data: images the preset accepts.
            expected_output_shapes: the shape of each output of the call, by key.
            init_kwargs: `NVAEConfig` overrides.

        Returns:
            `(model, outputs)`.
        """
        model = NVAE.from_preset(preset, **(init_kwargs or {}))
        outputs = model(input_data, training=False)
        shapes = {key: tuple(outputs[key].shape) for key in expected_output_shapes}
        assert shapes == {key: tuple(s) for key, s in expected_output_shapes.items()}
        assert NVAE.from_config(model.get_config()).config == model.config
        return model, outputs
