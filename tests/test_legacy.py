"""`.keras` files written before the per-group layout still load, with the outputs they gave."""

import os

import keras
import numpy as np
import pytest
from harness import REORDERED_RTOL

from keras_nvae.official import convert
from keras_nvae.official.legacy import _LegacyView

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "legacy_tiny")


@pytest.fixture(scope="module")
def legacy():
    return keras.saving.load_model(FIXTURE + ".keras"), np.load(FIXTURE + ".npz")


def test_legacy_file_reproduces_its_outputs(legacy):
    # The fixture holds the outputs the pre-split code gave for this input and noise on
    # another CPU. oneDNN picks its kernels (and so its summation order) by the CPU's
    # instruction set: on another CPU the flow-corrected KL (log q - log p, a difference of
    # larger terms) moved by 1.7e-6 of its largest value. A weight loaded into the wrong place
    # moves the outputs by orders of magnitude more.
    model, ref = legacy
    noise = [ref[f"noise_{i:02d}"] for i in range(model.num_groups)]
    out = model(ref["x"], training=False, noise=noise)
    for key in ("logits", "log_q", "log_p", "kl", "recon_nll"):
        scale = np.abs(ref[key]).max()
        np.testing.assert_allclose(out[key].numpy(), ref[key], rtol=0, atol=REORDERED_RTOL * scale)
    sample_noise = [ref[f"sample_noise_{i:02d}"] for i in range(model.num_groups)]
    samples = model.sample(2, temperature=0.7, noise=sample_noise)
    np.testing.assert_allclose(samples.numpy(), ref["samples"], atol=1e-6)
    assert int(model.global_step.numpy()) == int(ref["global_step"])


def test_legacy_variable_order_is_the_recorded_one(legacy):
    model, ref = legacy
    names = {
        id(variable): name
        for name, (variable, _) in convert.official_name_map(model).items()
        if not isinstance(variable, str)
    }
    order = [names[id(v)] for v in _LegacyView(model).trainable_variables]
    assert order == [str(name) for name in ref["trainable_order"]]
    assert order != [names[id(v)] for v in model.trainable_variables]


def test_legacy_optimizer_slots_follow_their_variables(legacy):
    # The flat Adamax slots were written in the old variable order; after loading,
    # every variable's segment must hold the values it had (compared by name).
    model, ref = legacy
    name_map = convert.official_name_map(model)

    def by_name(flat, variables, names):
        segments, offset = {}, 0
        for variable, name in zip(variables, names):
            size = int(np.prod(variable.shape))
            segments[name] = flat[offset : offset + size]
            offset += size
        return segments

    old_names = [str(name) for name in ref["trainable_order"]]
    old_variables = [name_map[name][0] for name in old_names]
    new_names = {id(v): n for n, (v, _) in name_map.items() if not isinstance(v, str)}
    current = model.trainable_variables
    for slot, flat in (("momentum", model.optimizer._momentum), ("norm", model.optimizer._norm)):
        expected = by_name(ref[slot], old_variables, old_names)
        loaded = by_name(flat.numpy(), current, [new_names[id(v)] for v in current])
        for name in old_names:
            np.testing.assert_array_equal(loaded[name], expected[name], err_msg=f"{slot} {name}")
    assert int(model.optimizer.iterations.numpy()) == int(ref["global_step"])


def test_legacy_model_saves_in_the_current_layout(legacy, tmp_path):
    model, ref = legacy
    path = str(tmp_path / "resaved.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    noise = [ref[f"noise_{i:02d}"] for i in range(model.num_groups)]
    np.testing.assert_array_equal(
        reloaded(ref["x"], training=False, noise=noise)["logits"].numpy(),
        model(ref["x"], training=False, noise=noise)["logits"].numpy(),
    )
