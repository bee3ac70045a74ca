"""Tests for keras_nvae.convert (official checkpoints) and trainers/convert.py (its CLI)."""

import argparse
import json
import os
import sys

import keras
import numpy as np
import pytest

from harness import OUTPUT_KEYS
from harness import PARITY_RTOL
from harness import REORDERED_RTOL
from harness import Reference
from harness import lean_tiny
from harness import noise_seed_state
from harness import relative_error
from harness import tiny_images
from keras_nvae.official import convert
from keras_nvae.model import NVAE
from keras_nvae.cli import convert as convert_cli


def _load_fixture(name):
    ref = Reference(name)
    return ref.arrays, ref.args, ref.state_dict, ref.noise("eval")


@pytest.fixture(scope="module")
def mnist():
    return _load_fixture("mnist")


@pytest.fixture(scope="module")
def mnist_model(mnist):
    """A model with the MNIST fixture's configuration (weights not loaded)."""
    _, args, _, _ = mnist
    keras.utils.set_random_seed(0)
    return NVAE(convert.config_from_official_args(args))


def _assert_matches_fixture(model, arrays, noise):
    # Outputs of the model loaded through a file vs. the fixture: the parity budget.
    out = model(arrays["x_uint8"], training=False, noise=noise)
    for key in OUTPUT_KEYS:
        error = relative_error(out[key], arrays[f"eval/{key}"])
        assert error <= PARITY_RTOL, (key, error)


def _write_npz(path, args, state):
    np.savez(path, args_json=json.dumps(args), **{f"param/{k}": v for k, v in state.items()})
    return str(path)


def _snapshot(model):
    return [v.numpy().copy() for v in model.variables]


def _assert_unchanged(model, snapshot):
    for variable, before in zip(model.variables, snapshot):
        np.testing.assert_array_equal(variable.numpy(), before, err_msg=variable.path)


# -------------------------------------------------------------- official flags
def test_config_from_dict_and_namespace(mnist):
    _, args, _, _ = mnist
    from_dict = convert.config_from_official_args(args)
    from_namespace = convert.config_from_official_args(argparse.Namespace(**args))
    assert from_dict == from_namespace
    assert from_dict.image_shape == (28, 28, 1)
    assert from_dict.pad_to == 32
    assert from_dict.likelihood == "bernoulli"
    assert from_dict.groups_per_scale == tuple(args["groups_per_scale"])
    assert from_dict.num_flows == args["num_nf"]
    assert from_dict.num_channels_enc == args["num_channels_enc"]


def test_config_cifar_flags():
    _, args, _, _ = _load_fixture("cifar")
    config = convert.config_from_official_args(args, official_dmol=True)
    assert config.image_shape == (32, 32, 3)
    assert config.pad_to is None
    assert config.likelihood == "dmol"
    assert config.num_mixtures == 10
    assert config.num_flows == 1
    assert config.official_dmol
    assert config.groups_per_scale == tuple(args["groups_per_scale"])
    assert not convert.config_from_official_args(args).official_dmol


def test_config_compat_defaults_for_old_checkpoints(mnist):
    # Older official checkpoints lack these flags; evaluate.py assumes these defaults.
    _, args, _, _ = mnist
    dropped = ("ada_groups", "min_groups_per_scale", "num_mixture_dec")
    old = {k: v for k, v in args.items() if k not in dropped}
    config = convert.config_from_official_args(old)
    assert not config.ada_groups
    assert config.min_groups_per_scale == 1
    assert config.groups_per_scale == (2, 2)


@pytest.mark.parametrize(
    "flag, value",
    [
        ("dataset", "svhn"),
        ("dataset", None),
        ("arch_instance", "res_mbconv9"),
        ("num_x_bits", 9),
        ("num_channels_enc", 0),
    ],
)
def test_unsupported_flags_raise_naming_the_flag(flag, value):
    _, args, _, _ = _load_fixture("cifar")
    args = {**args, flag: value}
    with pytest.raises(ValueError, match=flag):
        convert.config_from_official_args(args)


# --------------------------------------------------------------- state dicts
def test_load_state_dict_with_module_prefix(mnist, mnist_model):
    arrays, _, state, noise = mnist
    prefixed = {f"module.{k}": v for k, v in state.items()}
    convert.load_official_state_dict(mnist_model, prefixed)
    _assert_matches_fixture(mnist_model, arrays, noise)


def test_missing_tensor_raises_and_assigns_nothing(mnist, mnist_model):
    _, _, state, _ = mnist
    state = dict(state)
    del state["stem.weight"]
    before = _snapshot(mnist_model)
    with pytest.raises(convert.OfficialCheckpointError, match="stem.weight"):
        convert.load_official_state_dict(mnist_model, state)
    _assert_unchanged(mnist_model, before)


def test_unused_tensor_raises_and_assigns_nothing(mnist, mnist_model):
    _, _, state, _ = mnist
    state = {**state, "enc_tower.99.conv.weight": np.zeros((1, 1, 1, 1), np.float32)}
    before = _snapshot(mnist_model)
    with pytest.raises(convert.OfficialCheckpointError, match=r"enc_tower\.99\.conv\.weight"):
        convert.load_official_state_dict(mnist_model, state)
    _assert_unchanged(mnist_model, before)


def test_shape_mismatch_raises_and_assigns_nothing(mnist):
    _, args, state, _ = mnist
    keras.utils.set_random_seed(1)
    model = NVAE(convert.config_from_official_args(args))
    # Corrupt the last bias in the mapping's order: every other tensor is checked (and would
    # have been assigned by a loader that assigns as it goes) before the mismatch is found.
    bad = [name for name in convert.official_name_map(model) if name.endswith(".bias")][-1]
    state = {**state, bad: np.concatenate([state[bad], state[bad][:1]])}
    before = _snapshot(model)
    with pytest.raises(convert.OfficialCheckpointError, match="Shape mismatch") as info:
        convert.load_official_state_dict(model, state)
    assert bad in str(info.value)
    _assert_unchanged(model, before)


def test_corrupt_derived_buffer_raises():
    # Non-weight-normalised convs (inside MBConv cells) carry `weight_normalized`, a copy of
    # `weight`; a checkpoint where they disagree is corrupt.
    _, args, state, _ = _load_fixture("cifar")
    name = next(k for k in state if k.endswith(".weight_normalized"))
    state = {**state, name: state[name] + 1.0}
    model = NVAE(convert.config_from_official_args(args))
    with pytest.raises(convert.OfficialCheckpointError, match="weight_normalized"):
        convert.load_official_state_dict(model, state)


# ----------------------------------------------------------- checkpoint files
def test_load_official_checkpoint_npz(tmp_path):
    arrays, args, state, noise = _load_fixture("cifar")
    path = _write_npz(tmp_path / "checkpoint.npz", args, state)
    model = convert.load_official_checkpoint(path, official_dmol=True)
    assert model.config.official_dmol
    _assert_matches_fixture(model, arrays, noise)


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        convert.load_official_checkpoint(str(tmp_path / "nope.npz"))
    with pytest.raises(FileNotFoundError):
        convert.load_official_checkpoint(str(tmp_path / "nope.pt"))


def test_corrupt_npz(tmp_path):
    path = tmp_path / "corrupt.npz"
    path.write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(convert.OfficialCheckpointError):
        convert.load_official_checkpoint(str(path))


def test_npz_without_flags(tmp_path, mnist):
    _, _, state, _ = mnist
    path = tmp_path / "weights_only.npz"
    np.savez(path, **{f"param/{k}": v for k, v in state.items()})
    with pytest.raises(convert.OfficialCheckpointError, match="args_json"):
        convert.load_official_checkpoint(str(path))


def test_pt_checkpoint_without_torch_explains_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"not a pickle")
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    with pytest.raises(ImportError, match=r"keras_nvae\[convert\]"):
        convert.load_official_checkpoint(str(path))


def _official_checkpoint(args, state):
    """The dict the official train.py saves, with real optimizer, scheduler and scaler states.

    The optimizer (Adamax), schedule (cosine) and loss scaler (init 2**10) are built and stepped
    as train.py builds them, so their state dicts hold what a real checkpoint holds.
    """
    import torch

    tensors = {f"module.{k}": torch.from_numpy(np.array(v)) for k, v in state.items()}
    params = [torch.nn.Parameter(t.clone()) for t in tensors.values() if t.is_floating_point()]
    optimizer = torch.optim.Adamax(params, 1e-2, weight_decay=3e-4, eps=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 4.0, eta_min=1e-4)
    scaler = torch.amp.GradScaler("cpu", init_scale=2**10)
    scaler.scale(sum((p**2).sum() for p in params)).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return {
        "epoch": 2,
        "state_dict": tensors,
        "optimizer": optimizer.state_dict(),
        "global_step": 10,
        "args": argparse.Namespace(**args),
        "arch_instance": args["arch_instance"],
        "scheduler": scheduler.state_dict(),
        "grad_scalar": scaler.state_dict(),
    }


class _CreatesFile:
    """Unpickles as `open(path, "w")`: a pickle that runs code (it creates `path`)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_official_pt_checkpoint_with_torch(tmp_path):
    import torch

    arrays, args, state, noise = _load_fixture("cifar")
    checkpoint = _official_checkpoint(args, state)
    assert checkpoint["optimizer"]["state"] and checkpoint["grad_scalar"]["scale"] == 2.0**10
    path = str(tmp_path / "checkpoint.pt")
    torch.save(checkpoint, path)
    # Besides what torch.load(weights_only=True) allows, the file references only the flags'
    # class, the one global the converter allows.
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == ["argparse.Namespace"]
    model = convert.load_official_checkpoint(path, official_dmol=True)
    _assert_matches_fixture(model, arrays, noise)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pt_checkpoint_running_code_is_refused(tmp_path, zip_format):
    import torch

    _, args, state, _ = _load_fixture("mnist")
    marker = tmp_path / "created_by_the_checkpoint"
    checkpoint = {**_official_checkpoint(args, state), "epoch": _CreatesFile(marker)}
    path = str(tmp_path / "crafted.pt")
    torch.save(checkpoint, path, _use_new_zipfile_serialization=zip_format)
    # Only the payload is named: the allowed flags' class is not reported.
    refusal = r"Refused to load .*: it references io\.open,"
    with pytest.raises(convert.OfficialCheckpointError, match=refusal):
        convert.load_official_checkpoint(path)
    assert not marker.exists()
    # The payload is live: unpickling the file without the restriction creates the file.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_pt_checkpoint_needs_torch_with_safe_loading(tmp_path, monkeypatch):
    import torch

    path = tmp_path / "checkpoint.pt"
    torch.save({"args": {}, "state_dict": {}}, path)
    monkeypatch.delattr(torch.serialization, "safe_globals")
    with pytest.raises(ImportError, match=r"torch >= 2\.5"):
        convert.load_official_checkpoint(str(path))


def _truncated_checkpoint(path):
    import torch

    torch.save({"args": {}, "state_dict": {"w": torch.zeros(4)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _saved(content):
    def write(path):
        import torch

        torch.save(content(torch), path)

    return write


# Each message names what the file holds and what was expected.
UNREADABLE = r"is not a readable PyTorch checkpoint \({}.*\); expected an official NVAE checkpoint"
NOT_NVAE_PT = {
    "garbage": (
        lambda path: path.write_bytes(b"not a pickle"),
        UNREADABLE.format("UnpicklingError"),
    ),
    "empty": (lambda path: path.write_bytes(b""), UNREADABLE.format("EOFError")),
    "truncated_zip": (_truncated_checkpoint, UNREADABLE.format("RuntimeError: .*zip archive")),
    "tensor": (
        _saved(lambda torch: torch.zeros(3)),
        "holds a Tensor, not an official NVAE checkpoint: a dict with 'args'",
    ),
    "list": (
        _saved(lambda torch: [torch.zeros(3)]),
        "holds a list, not an official NVAE checkpoint: a dict with 'args'",
    ),
    "state_dict_only": (
        _saved(lambda torch: {"stem.weight": torch.zeros(3)}),
        r"keys \['stem.weight'\], without \['args', 'state_dict'\]; expected an official NVAE",
    ),
    "args_none": (
        _saved(lambda torch: {"args": None, "state_dict": {"w": torch.zeros(3)}}),
        r"flags \('args'\) are None, not an argparse\.Namespace or dict",
    ),
    "state_dict_list": (
        _saved(lambda torch: {"args": argparse.Namespace(), "state_dict": [torch.zeros(3)]}),
        "'state_dict' is a list, not a dict of official parameter name -> tensor",
    ),
    "state_dict_not_tensors": (
        _saved(lambda torch: {"args": {}, "state_dict": {"w": torch.zeros(3), "step": 3}}),
        r"entries \['step'\] are not official parameter name -> tensor pairs",
    ),
}


@pytest.mark.parametrize("kind", sorted(NOT_NVAE_PT))
def test_pt_file_that_is_not_an_nvae_checkpoint(tmp_path, kind):
    write, message = NOT_NVAE_PT[kind]
    path = tmp_path / "checkpoint.pt"
    write(path)
    with pytest.raises(convert.OfficialCheckpointError, match=message) as info:
        convert.load_official_checkpoint(str(path))
    assert "weights_only=False" not in str(info.value)  # torch's advice to unpickle unsafely


def test_npz_whose_flags_are_not_a_dict(tmp_path, mnist):
    _, _, state, _ = mnist
    path = _write_npz(tmp_path / "checkpoint.npz", ["not", "flags"], state)
    with pytest.raises(convert.OfficialCheckpointError, match=r"flags \('args_json'\) are a list"):
        convert.load_official_checkpoint(path)


# ------------------------------------------- generic converter: own round trip
def _to_official_state_dict(model):
    """Export `model`'s variables under the official names, in PyTorch layouts.

    Inverts the layout conversions of `convert.official_name_map`: conv kernels
    (kh, kw, C_in, C_out) -> (C_out, C_in, kh, kw); dense (in, out) -> (out, in); log weight
    norms (C,) -> (C, 1, 1, 1); `prior_ftr0` (h, w, c) -> (c, h, w). Adds the buffers the
    official code also stores: `weight_normalized` (a copy of `weight` for non-weight-normalised
    convs) and BN `num_batches_tracked`.
    """
    state, derived = {}, {}
    for name, (target, _) in convert.official_name_map(model).items():
        if isinstance(target, str):
            if target == "ignored":
                state[name] = np.array(7, np.int64)
            else:
                derived[name] = name[: -len("_normalized")]
            continue
        value = target.numpy()
        if name == "prior_ftr0":
            value = np.transpose(value, (2, 0, 1))
        elif name.endswith(".log_weight_norm"):
            value = np.reshape(value, (-1, 1, 1, 1))
        elif value.ndim == 4:
            value = np.transpose(value, (3, 2, 0, 1))
        elif value.ndim == 2:
            value = np.transpose(value)
        state[name] = np.array(value)
    for name, source in derived.items():
        state[name] = state[source].copy()
    return state


def _perturb(model, rng):
    """Move every mapped variable off its initial value (so a forgotten tensor shows)."""
    for name, (target, _) in convert.official_name_map(model).items():
        if isinstance(target, str):
            continue
        value = target.numpy()
        if name.endswith(".running_var"):
            new = rng.uniform(0.5, 1.5, value.shape)
        else:
            new = value * rng.uniform(0.8, 1.2, value.shape) + 0.05 * rng.normal(size=value.shape)
        target.assign(new.astype(value.dtype))


GENERIC_FLAGS = {
    # 3 scales, adaptive groups [4, 2, 2], 2 flow pairs, 5 bits, 3 mixtures, 2 cells per group.
    "multiscale_flows": dict(
        dataset="cifar10",
        num_latent_scales=3,
        num_groups_per_scale=4,
        ada_groups=True,
        min_groups_per_scale=2,
        num_nf=2,
        num_x_bits=5,
        num_mixture_dec=3,
        num_cell_per_cond_enc=2,
        num_cell_per_cond_dec=2,
        num_channels_enc=4,
        num_channels_dec=4,
        num_latent_per_group=3,
        num_preprocess_blocks=1,
        num_postprocess_blocks=1,
        num_preprocess_cells=2,
        num_postprocess_cells=2,
    ),
    # Another cell recipe, no squeeze-excitation, non-residual posterior, MNIST geometry.
    "bnswish_mnist": dict(
        dataset="mnist",
        arch_instance="res_bnswish",
        use_se=False,
        res_dist=False,
        num_latent_scales=2,
        num_groups_per_scale=2,
        num_nf=1,
        num_channels_enc=4,
        num_channels_dec=4,
        num_latent_per_group=2,
        num_preprocess_blocks=2,
        num_postprocess_blocks=2,
        num_preprocess_cells=1,
        num_postprocess_cells=1,
    ),
}


@pytest.mark.parametrize("variant", sorted(GENERIC_FLAGS))
def test_round_trip_through_official_names(variant):
    _, base, _, _ = _load_fixture("cifar")
    args = {**base, "ada_groups": False, "min_groups_per_scale": 1, **GENERIC_FLAGS[variant]}
    config = convert.config_from_official_args(args)
    if variant == "multiscale_flows":
        assert config.groups_per_scale == (4, 2, 2)  # halved per scale, floored at 2
    keras.utils.set_random_seed(3)
    source = NVAE(config)
    _perturb(source, np.random.default_rng(0))

    # The mapping covers every variable except the training-loop state, and no variable twice.
    targets = [t for t, _ in convert.official_name_map(source).values() if not isinstance(t, str)]
    assert len({id(t) for t in targets}) == len(targets)
    mapped = {id(t) for t in targets}
    unmapped = [v.path for v in source.variables if id(v) not in mapped]
    allowed = (
        "global_step", "total_steps", "seed_generator_state", "spectral_regularizer/", "step_guard/"
    )
    assert all(any(a in path for a in allowed) for path in unmapped), unmapped

    state = _to_official_state_dict(source)
    assert any(k.endswith(".num_batches_tracked") for k in state)
    if config.arch_instance == "res_mbconv":
        assert any(k.endswith(".weight_normalized") for k in state)

    rng = np.random.default_rng(1)
    batch = 2
    x = rng.integers(0, 256, (batch,) + config.image_shape).astype(np.uint8)
    if config.likelihood == "bernoulli":
        x = np.where(x > 127, 255, 0).astype(np.uint8)
    noise = [rng.normal(size=(batch,) + s).astype(np.float32) for s in config.latent_shapes]
    expected = source(x, training=False, noise=noise)

    keras.utils.set_random_seed(4)
    target = NVAE(config)
    before = target(x, training=False, noise=noise)
    assert not np.allclose(before["logits"], expected["logits"])  # the load must do the work
    convert.load_official_state_dict(target, state)
    got = target(x, training=False, noise=noise)
    # Identical weights and graph: equal up to float32 summation-order jitter (1e-6 relative).
    for key in OUTPUT_KEYS:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-6, atol=1e-6, err_msg=key)
    sample_noise = [rng.normal(size=(batch,) + s).astype(np.float32) for s in config.latent_shapes]
    _, want = source.sample(batch, temperature=0.7, noise=sample_noise, return_logits=True)
    _, have = target.sample(batch, temperature=0.7, noise=sample_noise, return_logits=True)
    np.testing.assert_allclose(have, want, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def cli():
    return convert_cli


def test_cli_converts_npz_to_keras(tmp_path, cli):
    arrays, args, state, noise = _load_fixture("cifar")
    checkpoint = _write_npz(tmp_path / "checkpoint.npz", args, state)
    output = str(tmp_path / "out" / "nvae.keras")
    status = cli.main(
        ["convert.py", f"--checkpoint={checkpoint}", f"--output={output}", "--official_dmol"]
    )
    assert status == 0
    model = keras.saving.load_model(output)
    assert isinstance(model, NVAE)
    assert model.config.official_dmol
    _assert_matches_fixture(model, arrays, noise)


def test_cli_default_is_correct_likelihood(tmp_path, cli, mnist):
    arrays, args, state, noise = mnist
    checkpoint = _write_npz(tmp_path / "checkpoint.npz", args, state)
    output = str(tmp_path / "nvae.keras")
    assert cli.main(["convert.py", f"--checkpoint={checkpoint}", f"--output={output}"]) == 0
    model = keras.saving.load_model(output)
    assert not model.config.official_dmol
    _assert_matches_fixture(model, arrays, noise)


def test_cli_converts_npz_to_a_preset_directory(tmp_path, cli):
    arrays, args, state, noise = _load_fixture("cifar")
    checkpoint = _write_npz(tmp_path / "checkpoint.npz", args, state)
    preset_dir = str(tmp_path / "nvae_cifar")
    status = cli.main(
        [
            "convert.py",
            f"--checkpoint={checkpoint}",
            f"--preset_dir={preset_dir}",
            "--official_dmol",
        ]
    )
    assert status == 0
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.npz", "nvae_cifar"]  # No .keras file.
    model = NVAE.from_preset(preset_dir)
    assert model.config == convert.config_from_official_args(args, official_dmol=True)
    _assert_matches_fixture(model, arrays, noise)
    with open(os.path.join(preset_dir, "metadata.json")) as file:
        metadata = json.load(file)
    assert metadata["source"] == f"converted from the official checkpoint {checkpoint}"
    assert metadata["trainable_parameters"] == sum(
        int(np.prod(w.shape)) for w in model.trainable_weights
    )


@pytest.mark.parametrize(
    "make_argv, message",
    [
        (lambda d: [f"--checkpoint={d}/nope.npz", f"--output={d}/o.keras"], "No checkpoint"),
        (lambda d: [f"--checkpoint={d}/corrupt.npz", f"--output={d}/o.keras"], "not a readable"),
        (lambda d: [f"--checkpoint={d}/garbage.pt", f"--output={d}/o.keras"], ""),
        (lambda d: [f"--checkpoint={d}/corrupt.npz"], "--output or --preset_dir is required"),
        (lambda d: ["--no_such_flag"], "no_such_flag"),
    ],
)
def test_cli_errors_exit_1_without_traceback(tmp_path, cli, capsys, make_argv, message):
    (tmp_path / "corrupt.npz").write_bytes(b"garbage")
    (tmp_path / "garbage.pt").write_bytes(b"garbage")
    status = cli.main(["convert.py"] + make_argv(tmp_path))
    err = capsys.readouterr().err
    assert status == 1
    assert "error:" in err and message in err
    assert "Traceback" not in err
    assert not (tmp_path / "o.keras").exists()


@pytest.mark.parametrize("kind", ["crafted", "not_nvae"])
def test_cli_refuses_unsafe_and_non_nvae_pt_in_one_line(tmp_path, cli, capsys, kind):
    import torch

    marker = tmp_path / "created_by_the_checkpoint"
    content = {"args": {}, "state_dict": {}, "epoch": _CreatesFile(marker)}
    if kind == "not_nvae":
        content = [torch.zeros(2)]
    checkpoint = str(tmp_path / "checkpoint.pt")
    torch.save(content, checkpoint)
    output = tmp_path / "o.keras"
    status = cli.main(["convert.py", f"--checkpoint={checkpoint}", f"--output={output}"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 1
    assert len(lines) == 1, lines
    expected = "Refused to load" if kind == "crafted" else "holds a list, not an official NVAE"
    assert lines[0].startswith("convert: error: ") and expected in lines[0], lines[0]
    assert not marker.exists() and not output.exists()


@pytest.mark.slow
def test_cli_saved_model_export(tmp_path, cli):
    import tensorflow as tf

    # What is exported does not depend on where the weights came from (tests/test_export.py
    # checks every endpoint): a lean model keeps the export's tracing short.
    model = lean_tiny()
    directory = str(tmp_path / "saved_model")
    cli.export_saved_model(model, directory)
    # keras_nvae's loader finds every endpoint of a real export.
    from keras_nvae import loading

    loaded = loading.load_saved_model(directory)
    x = tiny_images(2)
    start = noise_seed_state(model).numpy()
    noise_seed_state(loaded).assign(start)
    images = loaded.reconstruct(tf.constant(x))["images"].numpy()
    np.testing.assert_allclose(images, model.reconstruct(x), rtol=0, atol=REORDERED_RTOL)
    samples = loaded.signatures["serving_default"](
        num_samples=tf.constant(2), temperature=tf.constant(0.7)
    )["images"]
    assert tuple(samples.shape) == (2, 16, 16, 3)
    nats = loaded.log_likelihood(tf.constant(x), num_samples=tf.constant(2))["nats"].numpy()
    assert np.all(np.isfinite(nats))
