"""Training parity with the official PyTorch NVAE: `nvae-parity` on trajectory fixtures.

`tests/fixtures/nvae_traj_<name>_tiny.npz` hold 5 official optimisation steps (state before and
after, every step's inputs, noise, beta, lambda, learning rate and loss terms); see
`keras_nvae.parity` for how they are replayed. Tolerances (from the fixture README): the official
run's own float32 spread is ~2e-7 relative on the losses and 5.5e-5 of a tensor's largest
magnitude on the final state, so 1e-5 on the losses and 1e-3 on the state accept a correct port,
while a wrong gradient path (e.g. no weight decay: up to 9e-3) fails. The broken-replay tests
check that the check itself can fail.

The fixtures fix beta, lambda and the learning rate per step; the schedules themselves are checked
in closed form here (`compute_objective`'s defaults) and in test_objectives / test_optimizers.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from keras_nvae import NVAE
from keras_nvae.official import convert
from keras_nvae.training import objectives
from keras_nvae.training import optimizers as nvae_optimizers
from keras_nvae.official import parity as parity_lib
from keras_nvae.cli import parity

FIXTURE_DIR = os.path.join(os.path.dirname(__file__), "fixtures")


def fixture_path(name):
    return os.path.join(FIXTURE_DIR, name)


def run_parity(capsys, *args):
    """`nvae-parity ARGS` in-process: (exit status, parsed stdout or None, stderr)."""
    status = parity.main(["nvae-parity", *args])
    out, err = capsys.readouterr()
    return status, (json.loads(out) if out.strip() else None), err


# ----------------------------------------------------------------- fixtures pass
@pytest.mark.parametrize("name", ["mnist", "cifar"])
def test_trajectory_fixture_within_tolerance(capsys, name):
    path = fixture_path(f"nvae_traj_{name}_tiny.npz")
    status, report, _ = run_parity(capsys, path)
    assert report["kind"] == "trajectory"
    assert len(report["steps"]) == 5
    for step in report["steps"]:
        assert set(step) == {"loss", "recon", "kl", "spectral", "bn_reg"}
        assert max(step.values()) <= 1e-5, report["steps"]
    final = report["final_state"]
    assert final["max_error"] <= 1e-3, (final["worst_tensor"], final["max_error"])
    with np.load(path) as data:
        final_names = {key[len("final/"):] for key in data.files if key.startswith("final/")}
    # Every tensor is compared by official name, except the BN step counters and buffers
    # that duplicate another tensor (the converter checks those equal on loading).
    assert set(final["errors"]) | set(final["not_compared"]) == final_names
    assert not set(final["errors"]) & set(final["not_compared"])
    assert len(final["not_compared"]) < len(final_names) / 4
    worst = list(final["errors"].items())[:5]
    assert [tuple(pair) for pair in final["worst_tensors"]] == worst
    assert status == 0


# ------------------------------------------------------------ deep configuration
# `nvae_traj_deep_tiny.npz` (3 scales, ada groups [3, 1, 1], two flow pairs per group, 5-bit DMoL,
# lambda annealed from 2.0) holds one kernel whose two largest singular values are 0.4 % apart
# (sigma2 / sigma1 = 0.9959): the raw 1x1 convolution of the up-sampling cell dec_tower.4. With
# lambda 1.53 its spectral gradient u v^T dominates its first Adamax steps, and 4 power iterations
# per step cannot re-converge u, v after each step, so the 5-step result depends on where the
# official power iteration started. The fixture does not record that start: "1000 iterations"
# leave a tilt towards the second singular pair of 0.99591^2000 = 2.7e-4 times the random start's
# ratio, and a tilt of 1e-2 moves the final kernel by 1.5e-2 of its largest magnitude. From a
# converged start (this library, any seed) the replay ends 1.5e-2 away there (BUILD_NOTES,
# "Training parity"); a start tilted by 0.84 % brings all 682 tensors within 7.7e-5 and all
# step terms within 6.4e-7. That one scalar is fitted; the agreement of everything else on it is
# what this test checks.
DEEP_KERNEL = "dec_tower.4._ops.0.conv.4"
DEEP_TILT = 0.0084


def _tilt_power_iteration(name, tilt):
    """A `check_trajectory(prepare=...)` tilting one kernel's u, v towards its 2nd singular pair."""

    def prepare(model):
        index = parity_lib.spectral_names(model).index(name)
        regularizer = model.spectral_regularizer
        group, row = next(
            (g, members.index(index))
            for g, members in enumerate(regularizer._group_indices)
            if index in members
        )
        matrix = np.asarray(model._conv_layers[index].spectral_matrix(), np.float64)
        left, _, right = np.linalg.svd(matrix)
        for variable, vectors in ((regularizer._u[group], left.T), (regularizer._v[group], right)):
            values = np.asarray(variable).copy()
            sign = np.sign(values[row] @ vectors[0])
            tilted = sign * (vectors[0] + tilt * vectors[1])
            values[row] = tilted / np.linalg.norm(tilted)
            variable.assign(values)

    return prepare


def test_deep_trajectory_from_the_official_power_iteration_start():
    report = parity_lib.check_trajectory(
        fixture_path("nvae_traj_deep_tiny.npz"),
        prepare=_tilt_power_iteration(DEEP_KERNEL, DEEP_TILT),
    )
    assert report["max_step_error"] <= 1e-5, report["steps"]
    final = report["final_state"]
    assert final["max_error"] <= 1e-3, final["worst_tensors"]
    assert len(final["errors"]) == 682
    assert report["passed"]


def test_forward_fixture_through_the_command(capsys):
    status, report, _ = run_parity(capsys, fixture_path("nvae_ref_mnist_tiny.npz"))
    assert report["kind"] == "forward"
    assert report["max_error"] <= 1e-5
    assert status == 0


# --------------------------------------------------------- the check can fail
def _balance_kl_with_gradient(kl_per_group, beta, alphas, balance=True):
    """objectives.balance_kl with gradient through the balancing coefficients (a bug)."""
    kl_per_group = ops.convert_to_tensor(kl_per_group)
    beta = ops.cast(beta, kl_per_group.dtype)
    coeffs = ops.mean(ops.abs(kl_per_group), axis=0) + 0.01
    coeffs = coeffs / ops.cast(alphas, coeffs.dtype) * ops.sum(coeffs)
    coeffs = coeffs / ops.mean(coeffs)
    coeffs = ops.where(beta < 1.0, coeffs, ops.ones_like(coeffs))
    return beta * ops.sum(kl_per_group * coeffs, axis=1), coeffs


def _without_weight_decay(original):
    def config_from_official_args(args, **overrides):
        return original(args, **{**overrides, "weight_decay": 0.0})

    return config_from_official_args


@pytest.mark.parametrize("break_it", ["weight_decay", "kl_stop_gradient"])
def test_broken_replay_fails(capsys, monkeypatch, break_it):
    if break_it == "weight_decay":
        monkeypatch.setattr(
            convert,
            "config_from_official_args",
            _without_weight_decay(convert.config_from_official_args),
        )
    else:
        monkeypatch.setattr(objectives, "balance_kl", _balance_kl_with_gradient)
    status, report, err = run_parity(capsys, fixture_path("nvae_traj_mnist_tiny.npz"))
    assert not report["passed"]
    assert report["final_state"]["max_error"] > 1e-3
    assert status == 1
    # The summary on stderr: the verdict and the five worst tensors, largest first.
    assert "trajectory parity FAILED" in err
    worst = report["final_state"]["worst_tensors"]
    assert len(worst) == 5
    assert [error for _, error in worst] == sorted((error for _, error in worst), reverse=True)
    lines = err.splitlines()
    rows = [next(i for i, line in enumerate(lines) if line.endswith(name)) for name, _ in worst]
    assert rows == sorted(rows)
    assert f"{worst[0][1]:.2e}" in err


# ------------------------------------------------------------------ usage errors
def test_usage_errors_exit_2(capsys, tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("not a zip")
    no_config = tmp_path / "arrays.npz"
    np.savez(no_config, x=np.zeros(3))
    no_kind = tmp_path / "kindless.npz"
    np.savez(no_kind, config_json=json.dumps({"dataset": "mnist"}))
    cases = {
        (): "expected one fixture file",
        ("a.npz", "b.npz"): "expected one fixture file",
        ("--tolerance=1",): "unknown flags",
        (str(tmp_path / "missing.npz"),): "does not exist",
        (str(text),): "cannot read",
        (str(no_config),): "config_json",
        (str(no_kind),): "neither 'param/'",
    }
    for args, message in cases.items():
        status, report, err = run_parity(capsys, *args)
        assert status == 2, args
        assert report is None, args  # nothing on stdout
        assert message in err, (args, err)
        assert "Traceback" not in err


def test_fixture_with_missing_arrays_exits_2(capsys, tmp_path):
    # A trajectory fixture without its per-step arrays: a clear message, not a KeyError trace.
    with np.load(fixture_path("nvae_traj_mnist_tiny.npz")) as data:
        kept = {k: data[k] for k in data.files if k.startswith(("init/", "config_json"))}
    path = tmp_path / "partial.npz"
    np.savez(path, **kept)
    status, report, err = run_parity(capsys, str(path))
    assert status == 2
    assert report is None
    assert "lacks the array" in err


# ----------------------------------------------------------------- public hooks
@pytest.fixture(scope="module")
def tiny():
    return NVAE.from_preset("tiny", num_flows=0, weight_decay_norm=0.1)


def tiny_batch(model, n=2, seed=0):
    rng = np.random.RandomState(seed)
    images = rng.randint(0, 256, (n, 16, 16, 3)).astype("uint8")
    noise = [rng.randn(n, *shape).astype("float32") for shape in model.latent_shapes]
    return images, noise


def test_compute_objective_with_given_coefficients(tiny):
    images, noise = tiny_batch(tiny)
    terms = tiny.compute_objective(images, training=False, noise=noise, kl_coeff=0.3, reg_coeff=0.2)
    out = tiny(images, training=False, noise=noise)
    kl = out["kl"].numpy()
    balanced, _ = objectives.balance_kl(kl, 0.3, tiny.kl_alphas)
    expected = np.mean(out["recon_nll"].numpy() + balanced.numpy()) + 0.2 * (
        float(terms["spectral"]) + float(terms["bn_reg"])
    )
    np.testing.assert_allclose(float(terms["loss"]), expected, rtol=1e-6)
    assert float(terms["kl_coeff"]) == pytest.approx(0.3)
    assert float(terms["reg_coeff"]) == pytest.approx(0.2)


def test_compute_objective_defaults_follow_the_schedules():
    model = NVAE.from_preset(
        "tiny",
        num_flows=0,
        weight_decay_norm=0.1,
        weight_decay_norm_init=1.0,
        weight_decay_norm_anneal=True,
    )
    model.total_steps.assign(100)
    model.global_step.assign(20)
    images, noise = tiny_batch(model)
    terms = model.compute_objective(images, training=False, noise=noise)
    # KL warm-up (anneal 0.3, const 1e-4 of 100 steps): (20 - 0.01) / 30.
    beta = (20 - 1e-4 * 100) / (0.3 * 100)
    assert float(terms["kl_coeff"]) == pytest.approx(beta, rel=1e-6)
    # Annealed lambda: geometric from 1.0 (beta 0) to 0.1 (beta 1).
    assert float(terms["reg_coeff"]) == pytest.approx(0.1**beta, rel=1e-5)
    given = model.compute_objective(
        images, training=False, noise=noise, kl_coeff=beta, reg_coeff=0.1**beta
    )
    np.testing.assert_allclose(float(terms["loss"]), float(given["loss"]), rtol=1e-6)


def test_converge_spectral_reaches_the_top_singular_values():
    model = NVAE.from_preset("tiny", num_flows=0)
    model.converge_spectral(200)
    assert int(model.spectral_regularizer.initialized.numpy()) == 1
    estimate, _ = model.regularization_terms(training=False)
    exact = sum(
        np.linalg.svd(np.asarray(conv.spectral_matrix(), np.float64), compute_uv=False)[0]
        for conv in model._conv_layers
    )
    np.testing.assert_allclose(float(estimate), exact, rtol=1e-4)
    with pytest.raises(ValueError, match="positive integer"):
        model.converge_spectral(0)


def test_replay_step_updates_with_the_given_learning_rate():
    model = NVAE.from_preset("tiny", num_flows=0)
    model.compile(optimizer=nvae_optimizers.NVAEAdamax(learning_rate=1.0, l2_weight_decay=0.0))
    images, noise = tiny_batch(model)
    before = [v.numpy() for v in model.trainable_variables]
    model.replay_step(images, noise, kl_coeff=0.5, reg_coeff=0.0, learning_rate=1e-3)
    assert float(ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(1e-3)
    assert int(model.global_step.numpy()) == 1
    # First Adamax step: every update is lr * (1 - beta_1) g / max(|g| + eps, ...) / (1 - beta_1)
    # = lr * g / (|g| + eps), so no element moves by more than the learning rate.
    moves = [np.max(np.abs(v.numpy() - b)) for v, b in zip(model.trainable_variables, before)]
    assert max(moves) <= 1e-3 * (1 + 1e-5)
    assert max(moves) > 5e-4


def test_replay_step_errors():
    model = NVAE.from_preset("tiny", num_flows=0)
    images, noise = tiny_batch(model)
    with pytest.raises(ValueError, match="compile"):
        model.replay_step(images, noise, kl_coeff=0.5, reg_coeff=0.0, learning_rate=1e-3)
    model.compile(total_steps=10)  # the default optimizer follows a schedule
    with pytest.raises(ValueError, match="LearningRateSchedule"):
        model.replay_step(images, noise, kl_coeff=0.5, reg_coeff=0.0, learning_rate=1e-3)


def test_fixture_kind_is_detected_from_keys():
    assert parity_lib.Fixture(fixture_path("nvae_traj_mnist_tiny.npz")).kind == "trajectory"
    assert parity_lib.Fixture(fixture_path("nvae_ref_mnist_tiny.npz")).kind == "forward"
    with pytest.raises(parity_lib.FixtureError, match="not a trajectory"):
        parity_lib.check_trajectory(fixture_path("nvae_ref_mnist_tiny.npz"))


def test_raw_kernel_spectral_gradient_is_lambda_u_v(tiny):
    # The regulariser's gradient on a kernel without weight normalisation (the MBConv 1x1 and
    # depthwise convolutions) is lambda * u v^T of the vectors after this call's iterations,
    # laid out back as (kh, kw, C_in / groups, C_out) with columns ordered (kh, kw, C_in).
    raw = [conv for conv in tiny._conv_layers if not conv.weight_norm]
    assert {conv.groups > 1 for conv in raw} == {False, True}
    state = [tf.convert_to_tensor(v) for v in tiny.spectral_regularizer.variables]
    with tf.GradientTape() as tape:
        spectral, _ = tiny.regularization_terms(training=True)
        loss = 0.7 * spectral
    gradients = tape.gradient(loss, [conv.kernel for conv in raw])
    regularizer = tiny.spectral_regularizer
    for conv, gradient in zip(raw, gradients):
        index = tiny._conv_layers.index(conv)
        group, row = next(
            (g, members.index(index))
            for g, members in enumerate(regularizer._group_indices)
            if index in members
        )
        u = regularizer._u[group].numpy()[row]
        v = regularizer._v[group].numpy()[row]
        k, _, c_in, c_out = conv.kernel.shape
        expected = 0.7 * np.outer(u, v).reshape(c_out, k, k, c_in).transpose(1, 2, 3, 0)
        np.testing.assert_allclose(gradient.numpy(), expected, atol=1e-6)
    for variable, value in zip(tiny.spectral_regularizer.variables, state):
        variable.assign(value)
