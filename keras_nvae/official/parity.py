"""Parity checks against fixtures recorded with the official PyTorch NVAE.

Two kinds of `.npz` fixture (their format is described in the README of the
fixtures they come with), told apart by their keys:

* forward (`nvae_ref_*`, keys `param/...`): the official weights, an input
  batch, the latent noise and everything one eval-mode pass, one train-mode
  pass and one sampling pass computed; `check_forward` rebuilds the model
  from the recorded flags, loads the weights and compares.
* trajectory (`nvae_traj_*`, keys `init/...`): the state before and after a
  few official optimisation steps with the inputs, noise, beta, lambda and
  learning rate of every step; `check_trajectory` replays those steps with
  `NVAE.replay_step` (the update code of `fit`) and compares the step losses
  and the final state.

Errors are relative: `max|ours - reference| / max|reference|` per array (for
a scalar, `|ours - reference| / |reference|`). Both checks use the
documented compatibility option `official_dmol=True` (the official
unnormalised 8-bit DMoL likelihood); the trajectory replay sets each step's
learning rate on an `NVAEAdamax` with a float learning rate, so the
library's schedule options (per-step or per-epoch cosine) play no part.

Example:

```python
report = keras_nvae.parity.check("nvae_traj_cifar_tiny.npz")
print(report["passed"], report["final_state"]["max_error"])
```
"""

import json
import zipfile

import keras
import numpy as np

from keras_nvae.official import convert
from keras_nvae.training import objectives
from keras_nvae.training import optimizers as nvae_optimizers

# Forward outputs: ten times the official code's own float32 noise (<= 1e-6 of
# each array's largest magnitude, measured by re-running it in float64).
FORWARD_TOLERANCE = 1e-5
# Trajectory step losses: the official run's own spread over summation orders
# is ~2e-7 relative; the final state's is 5.5e-5 of a tensor's largest
# magnitude, while dropping the weight decay alone moves it by up to 9e-3.
TRAJECTORY_LOSS_TOLERANCE = 1e-5
TRAJECTORY_STATE_TOLERANCE = 1e-3
# Power iterations before replaying (the fixtures converged theirs with 1000).
SPECTRAL_ITERATIONS = 1000
# How many of the largest final-state errors a trajectory report lists on its own.
WORST_TENSORS = 5

OUTPUT_KEYS = ("logits", "kl", "log_q", "log_p", "recon_nll")
# Recorded per step, with the names `compute_objective` gives them.
STEP_TERMS = ("loss", "recon", "kl", "spectral", "bn_reg")


class FixtureError(ValueError):
    """A file that is not a readable parity fixture."""


def relative_error(actual, expected):
    """`max|actual - expected| / max|expected|` (absolute when expected is 0).

    Raises:
        ValueError: the shapes differ.
    """
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        raise ValueError(f"shape {actual.shape} differs from the reference {expected.shape}")
    scale = np.max(np.abs(expected)) if expected.size else 0.0
    difference = np.max(np.abs(actual - expected)) if expected.size else 0.0
    return float(difference / scale) if scale > 0 else float(difference)


class Fixture:
    """One parity fixture: its arrays, the official flags and state dicts.

    Args:
        path: the `.npz` file.

    Raises:
        FixtureError: the file is missing, not an `.npz`, or lacks the keys
            of either fixture kind; later, from the methods: a missing array,
            flags the library cannot build, or a state dict that does not fit
            them.

    Example:

    >>> fixture = Fixture("nvae_ref_mnist_tiny.npz")
    >>> model = fixture.build_model("param/")
    """

    def __init__(self, path):
        self.path = str(path)
        try:
            with np.load(self.path, allow_pickle=False) as data:
                self.arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
            raise FixtureError(f"cannot read {self.path!r} as an .npz file: {error}") from None
        if "config_json" not in self.arrays:
            raise FixtureError(f"{self.path!r} has no 'config_json': not a parity fixture.")
        try:
            self.args = dict(json.loads(str(self.arrays["config_json"])))
        except (ValueError, TypeError) as error:
            raise FixtureError(
                f"{self.path!r}: 'config_json' is not a JSON object: {error}"
            ) from None
        if any(key.startswith("param/") for key in self.arrays):
            self.kind = "forward"
        elif any(key.startswith("init/") for key in self.arrays):
            self.kind = "trajectory"
        else:
            raise FixtureError(
                f"{self.path!r} has neither 'param/' (forward) nor 'init/' (trajectory) keys."
            )

    def __getitem__(self, key):
        try:
            return self.arrays[key]
        except KeyError:
            raise FixtureError(f"{self.path!r} lacks the array {key!r}.") from None

    def state_dict(self, prefix):
        """{official name: array} of the keys under `prefix` (e.g. "param/")."""
        return {
            key[len(prefix) :]: value
            for key, value in self.arrays.items()
            if key.startswith(prefix)
        }

    def noise(self, prefix, num_groups):
        """The recorded noise `<prefix>eps_KK` of every latent group, top first."""
        return [self[f"{prefix}eps_{k:02d}"] for k in range(num_groups)]

    def config(self, **overrides):
        """The `NVAEConfig` of the recorded flags (official DMoL unless overridden)."""
        overrides.setdefault("official_dmol", True)
        try:
            return convert.config_from_official_args(self.args, **overrides)
        except ValueError as error:
            raise FixtureError(f"{self.path!r}: {error}") from None

    def build_model(self, prefix, seed=0, **overrides):
        """A fresh `NVAE` from the recorded flags, loaded with the state under `prefix`.

        Args:
            prefix: "param/" (forward fixtures) or "init/" (trajectories).
            seed: seeds the random state that loading does not set (the
                power-iteration vectors).
            **overrides: `NVAEConfig` fields on top of the recorded flags.

        Returns:
            The `keras_nvae.NVAE`.

        Raises:
            FixtureError: unsupported flags, or a state dict that does not fit them.
        """
        from keras_nvae.model import NVAE

        keras.utils.set_random_seed(seed)
        model = NVAE(self.config(**overrides))
        try:
            return convert.load_official_state_dict(model, self.state_dict(prefix))
        except convert.OfficialCheckpointError as error:
            raise FixtureError(f"{self.path!r}: {error}") from None


def check(path):
    """Run the check the fixture at `path` is for (forward or trajectory).

    Returns:
        The report of `check_forward` or `check_trajectory`.
    """
    fixture = Fixture(path)
    if fixture.kind == "forward":
        return check_forward(fixture)
    return check_trajectory(fixture)


def _as_fixture(path_or_fixture, kind):
    fixture = path_or_fixture if isinstance(path_or_fixture, Fixture) else Fixture(path_or_fixture)
    if fixture.kind != kind:
        raise FixtureError(f"{fixture.path!r} is a {fixture.kind} fixture, not a {kind} one.")
    return fixture


# ------------------------------------------------------------------- forward
def check_forward(path):
    """Compare one forward fixture (`nvae_ref_*`) with a model loaded from it.

    Checks the preprocessed input, the eval- and train-mode outputs with the
    recorded noise, the BN running statistics after the train-mode pass, the
    sampled logits, the exact spectral norm of every regularised kernel (by
    official name), the BN regulariser, the KL-balancing weights and
    balancer, and the trainable parameter count.

    Args:
        path: the fixture file (or a `Fixture`).

    Returns:
        dict: "kind", "fixture", "tolerance", "errors" ({check: relative
        error}), "spectral_names" (missing/extra regularised kernels),
        "trainable_params" (ours, reference), "max_error" and "passed".
    """
    fixture = _as_fixture(path, "forward")
    model = fixture.build_model("param/")
    num_groups = int(fixture["eval/num_groups"])
    errors = {}
    x, _ = model.preprocess_images(fixture["x_uint8"])
    errors["model_input"] = relative_error(x, fixture["x_model_input"])
    out = model(fixture["x_uint8"], training=False, noise=fixture.noise("eval/", num_groups))
    for key in OUTPUT_KEYS:
        errors[f"eval/{key}"] = relative_error(out[key], fixture[f"eval/{key}"])
    errors.update(_sample_errors(model, fixture, num_groups))
    spectral, names = _spectral_errors(model, fixture)
    errors.update(spectral)
    errors.update(_objective_errors(model, fixture))
    out = model(fixture["x_uint8"], training=True, noise=fixture.noise("train/", num_groups))
    for key in OUTPUT_KEYS:
        errors[f"train/{key}"] = relative_error(out[key], fixture[f"train/{key}"])
    errors.update(_state_errors(model, fixture.state_dict("train/bn_after/"), "train/bn_after/"))
    params = {
        "ours": sum(int(np.prod(v.shape)) for v in model.trainable_variables),
        "reference": int(fixture.args["trainable_params"]),
    }
    max_error = max(errors.values())
    passed = (
        max_error <= FORWARD_TOLERANCE
        and not names["missing"]
        and not names["extra"]
        and params["ours"] == params["reference"]
    )
    return {
        "kind": "forward",
        "fixture": fixture.path,
        "tolerance": FORWARD_TOLERANCE,
        "errors": errors,
        "spectral_names": names,
        "trainable_params": params,
        "max_error": max_error,
        "passed": bool(passed),
    }


def _sample_errors(model, fixture, num_groups):
    noise = fixture.noise("sample/", num_groups)
    _, logits = model.sample(
        noise[0].shape[0],
        temperature=float(fixture["sample/temperature"]),
        noise=noise,
        return_logits=True,
    )
    return {"sample/logits": relative_error(logits, fixture["sample/logits"])}


def spectral_names(model):
    """Official module name of every kernel the spectral regulariser sees, in its order."""
    by_variable = {
        id(target): name
        for name, (target, _) in convert.official_name_map(model).items()
        if not isinstance(target, str)
    }
    return [by_variable[id(conv.kernel)][: -len(".weight")] for conv in model._conv_layers]


def _spectral_errors(model, fixture):
    """Exact top singular value of every regularised kernel vs the reference's."""
    ours = {
        name: np.linalg.svd(np.asarray(conv.spectral_matrix(), np.float64), compute_uv=False)[0]
        for name, conv in zip(spectral_names(model), model._conv_layers)
    }
    reference = dict(
        zip((str(n) for n in fixture["loss/spectral_names"]), fixture["loss/spectral_values"])
    )
    names = {
        "missing": sorted(set(reference) - set(ours)),
        "extra": sorted(set(ours) - set(reference)),
    }
    common = [name for name in reference if name in ours]
    errors = {
        "loss/spectral_values": max(
            (abs(ours[name] - reference[name]) / reference[name] for name in common), default=0.0
        ),
        "loss/spectral_sum_exact": relative_error(
            sum(ours.values()), fixture["loss/spectral_sum_exact"]
        ),
    }
    return {key: float(value) for key, value in errors.items()}, names


def _objective_errors(model, fixture):
    _, bn = model.regularization_terms(training=False)
    balanced, coeffs = objectives.balance_kl(fixture["train/kl"], 0.5, model.kl_alphas)
    return {
        "loss/bn": relative_error(bn, fixture["loss/bn"]),
        "loss/alpha": relative_error(model.kl_alphas, fixture["loss/alpha"]),
        "loss/balanced_kl_beta_0.5": relative_error(
            balanced, fixture["loss/balanced_kl_beta_0.5"]
        ),
        "loss/kl_coeffs_beta_0.5": relative_error(coeffs, fixture["loss/kl_coeffs_beta_0.5"]),
    }


def _state_errors(model, state_dict, prefix=""):
    """{prefix + official name: relative error} of the model's tensors against `state_dict`.

    Official tensors the model does not hold (`num_batches_tracked`, buffers
    that duplicate another tensor) are left out; see `_uncompared`.
    """
    targets = convert.official_name_map(model)
    errors = {}
    for name, value in state_dict.items():
        variable, transform = targets[name]
        if isinstance(variable, str):
            continue
        expected = transform(value) if transform is not None else value
        errors[prefix + name] = relative_error(keras.ops.convert_to_numpy(variable), expected)
    return errors


def _uncompared(model, state_dict):
    """Names in `state_dict` that `_state_errors` leaves out."""
    targets = convert.official_name_map(model)
    return sorted(name for name in state_dict if isinstance(targets[name][0], str))


# ---------------------------------------------------------------- trajectory
def check_trajectory(path, prepare=None):
    """Replay a trajectory fixture (`nvae_traj_*`) and compare.

    Builds the model from the recorded flags, loads `init/`, converges the
    power iteration (`NVAE.converge_spectral`), compiles it with `NVAEAdamax`
    (the configured coupled weight decay, a float learning rate) and runs
    `NVAE.replay_step` for every recorded step with its inputs, noise, beta,
    lambda and learning rate.

    Args:
        path: the fixture file (or a `Fixture`).
        prepare: optional callable run on the model after the power
            iteration converged, before the first step (e.g. to start the
            power iteration from given vectors).

    Returns:
        dict: "kind", "fixture", "tolerances", "steps" (per step: the
        relative error of loss, recon, kl, spectral and bn_reg), "final_state"
        ("max_error", "worst_tensor", "worst_tensors": the `WORST_TENSORS`
        largest as [name, error] pairs, "errors": relative error per official
        tensor name, largest first, "not_compared": step counters and buffers
        that duplicate a compared tensor), "max_step_error" and "passed".
    """
    fixture = _as_fixture(path, "trajectory")
    model = fixture.build_model("init/")
    model.converge_spectral(SPECTRAL_ITERATIONS)
    if prepare is not None:
        prepare(model)
    model.compile(
        optimizer=nvae_optimizers.NVAEAdamax(
            learning_rate=float(fixture["lr"][0]), l2_weight_decay=model.config.weight_decay
        )
    )
    steps = _replay_recorded_steps(model, fixture)
    final = fixture.state_dict("final/")
    errors = _state_errors(model, final)
    errors = dict(sorted(errors.items(), key=lambda item: -item[1]))
    worst = next(iter(errors))
    max_step_error = max(max(step.values()) for step in steps)
    passed = (
        max_step_error <= TRAJECTORY_LOSS_TOLERANCE
        and errors[worst] <= TRAJECTORY_STATE_TOLERANCE
    )
    return {
        "kind": "trajectory",
        "fixture": fixture.path,
        "tolerances": {
            "step_terms": TRAJECTORY_LOSS_TOLERANCE,
            "final_state": TRAJECTORY_STATE_TOLERANCE,
        },
        "steps": steps,
        "max_step_error": max_step_error,
        "final_state": {
            "max_error": errors[worst],
            "worst_tensor": worst,
            "worst_tensors": [list(item) for item in list(errors.items())[:WORST_TENSORS]],
            "errors": errors,
            "not_compared": _uncompared(model, final),
        },
        "passed": bool(passed),
    }


def _replay_recorded_steps(model, fixture):
    """Run `NVAE.replay_step` for every step of a trajectory fixture.

    Returns:
        One dict per step: the relative error of each of `STEP_TERMS`
        against the recorded value.
    """
    lr = fixture["lr"]
    num_groups = int(fixture["num_groups"])
    steps = []
    for step in range(int(fixture["num_steps"])):
        terms = model.replay_step(
            fixture["x_uint8"][step],
            noise=fixture.noise(f"step{step:02d}/", num_groups),
            kl_coeff=float(fixture["kl_coeff"][step]),
            reg_coeff=float(fixture["wdn"][step]),
            learning_rate=float(lr[step]),
        )
        steps.append(
            {
                name: relative_error(terms[name], fixture[f"step{step:02d}/{name}"])
                for name in STEP_TERMS
            }
        )
    return steps
