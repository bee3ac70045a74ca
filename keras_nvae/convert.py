"""Load the official PyTorch NVAE (NVlabs/NVAE) checkpoints into `keras_nvae.NVAE`.

The official `checkpoint.pt` holds `args` (the train.py flags) and `state_dict`
(parameter and BN-buffer names of the PyTorch modules). `config_from_official_args`
maps the flags to an `NVAEConfig`; `load_official_state_dict` maps every tensor by
name onto the Keras model (layout transposes included) and fails loudly on any
missing, unused or mis-shaped tensor.

Example:
```python
model = keras_nvae.convert.load_official_checkpoint("checkpoint.pt")
images = model.sample(16, temperature=0.7)
```
"""

import argparse
import json
import os

import numpy as np

from keras_nvae.config import ARCHITECTURES, NVAEConfig
from keras_nvae.layers.cell_ops import BNSwishConv, InvertedResidual
from keras_nvae.layers.combiners import DecoderCombiner, EncoderCombiner
from keras_nvae.layers.skips import FactorizedReduce, UpsampleSkip

# dataset flag -> (image size, channels, padded size)
_DATASETS = {
    "mnist": (28, 1, 32),
    "omniglot": (28, 1, 32),
    "cifar10": (32, 3, None),
    "celeba_64": (64, 3, None),
    "celeba_256": (256, 3, None),
    "imagenet_32": (32, 3, None),
    "imagenet_64": (64, 3, None),
    "ffhq": (256, 3, None),
    "lsun_bedroom_128": (128, 3, None),
    "lsun_church_128": (128, 3, None),
    "lsun_church_64": (64, 3, None),
}

# official flag -> NVAEConfig field, for the flags that map one to one
_SAME_NAME = (
    "num_latent_scales",
    "num_groups_per_scale",
    "num_latent_per_group",
    "num_channels_enc",
    "num_channels_dec",
    "num_preprocess_blocks",
    "num_preprocess_cells",
    "num_postprocess_blocks",
    "num_postprocess_cells",
    "num_cell_per_cond_enc",
    "num_cell_per_cond_dec",
    "num_x_bits",
    "use_se",
    "res_dist",
    "arch_instance",
    "kl_anneal_portion",
    "kl_const_portion",
    "kl_const_coeff",
    "weight_decay_norm",
    "weight_decay_norm_init",
    "weight_decay_norm_anneal",
    "learning_rate",
    "learning_rate_min",
    "warmup_epochs",
    "weight_decay",
    "epochs",
    "batch_size",
    "ada_groups",
    "min_groups_per_scale",
)

# Defaults the official evaluate.py assumes for flags that older checkpoints lack.
_COMPAT_DEFAULTS = {"ada_groups": False, "min_groups_per_scale": 1, "num_mixture_dec": 10}


class CheckpointError(ValueError):
    """An official checkpoint or state dict that cannot be loaded."""


def config_from_official_args(args, **overrides):
    """Map the official train.py flags to an `NVAEConfig`.

    Args:
        args: a dict or `argparse.Namespace` of the official flags (as stored in
            the official checkpoint under "args").
        **overrides: `NVAEConfig` fields to set on top (e.g.
            `official_dmol=True` to reproduce the official likelihood exactly).

    Returns:
        An `NVAEConfig`.

    Raises:
        ValueError: a flag value the library does not support (named in the
            message).
    """
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    args = {**_COMPAT_DEFAULTS, **dict(args)}
    dataset = args.get("dataset")
    if dataset not in _DATASETS:
        raise ValueError(
            f"Official flag --dataset={dataset!r} is not supported; supported: "
            f"{sorted(_DATASETS)}."
        )
    if args.get("arch_instance", "res_mbconv") not in ARCHITECTURES:
        raise ValueError(
            f"Official flag --arch_instance={args['arch_instance']!r} is not supported; "
            f"supported: {sorted(ARCHITECTURES)}."
        )
    size, channels, pad_to = _DATASETS[dataset]
    if channels == 1:
        likelihood = "bernoulli"
    elif int(args["num_mixture_dec"]) == 1:
        likelihood = "normal"
    else:
        likelihood = "dmol"
    fields = {name: args[name] for name in _SAME_NAME if name in args}
    fields.update(
        image_shape=(size, size, channels),
        pad_to=pad_to,
        likelihood=likelihood,
        num_mixtures=int(args["num_mixture_dec"]),
        num_flows=int(args.get("num_nf", 0)),
    )
    if likelihood == "bernoulli":
        fields["num_x_bits"] = 8
    for name in ("learning_rate", "learning_rate_min", "weight_decay", "weight_decay_norm"):
        if name in fields:
            fields[name] = float(fields[name])
    fields.update(overrides)
    try:
        return NVAEConfig.from_dict(fields)
    except ValueError as error:
        raise ValueError(f"Official flags cannot be converted: {error}") from error


# ------------------------------------------------------------------ name mapping
def _conv_targets(prefix, conv):
    """{official name: (variable, transform)} for one (weight-normalised) conv."""
    targets = {f"{prefix}.weight": (conv.kernel, lambda w: np.transpose(w, (2, 3, 1, 0)))}
    if conv.use_bias:
        targets[f"{prefix}.bias"] = (conv.bias, None)
    if conv.weight_norm:
        targets[f"{prefix}.log_weight_norm"] = (
            conv.log_weight_norm,
            lambda g: np.reshape(g, (-1,)),
        )
    else:
        # The official code caches the (un-normalised) weight as a buffer.
        targets[f"{prefix}.weight_normalized"] = ("derived", f"{prefix}.weight")
    return targets


def _bn_targets(prefix, bn):
    return {
        f"{prefix}.weight": (bn.gamma, None),
        f"{prefix}.bias": (bn.beta, None),
        f"{prefix}.running_mean": (bn.moving_mean, None),
        f"{prefix}.running_var": (bn.moving_variance, None),
        f"{prefix}.num_batches_tracked": ("ignored", None),
    }


def _dense_targets(prefix, dense):
    return {
        f"{prefix}.weight": (dense.kernel, np.transpose),
        f"{prefix}.bias": (dense.bias, None),
    }


def _op_targets(prefix, op):
    if isinstance(op, BNSwishConv):
        return {**_bn_targets(f"{prefix}.bn_act", op.bn), **_conv_targets(f"{prefix}.conv_0", op.conv)}
    if isinstance(op, InvertedResidual):
        o = 1 if op.upsample else 0  # the up-sampling module comes first
        return {
            **_bn_targets(f"{prefix}.conv.{o}.bn", op.bn_in),
            **_conv_targets(f"{prefix}.conv.{o + 1}.conv.0", op.conv_expand),
            **_bn_targets(f"{prefix}.conv.{o + 1}.conv.1", op.bn_expand),
            **_conv_targets(f"{prefix}.conv.{o + 2}.conv.0", op.conv_depthwise),
            **_bn_targets(f"{prefix}.conv.{o + 2}.conv.1", op.bn_depthwise),
            **_conv_targets(f"{prefix}.conv.{o + 3}", op.conv_project),
            **_bn_targets(f"{prefix}.conv.{o + 4}.bn", op.bn_out),
        }
    raise TypeError(f"No official mapping for op {type(op).__name__}.")


def _cell_targets(prefix, cell):
    if isinstance(cell, (EncoderCombiner, DecoderCombiner)):
        return _conv_targets(f"{prefix}.conv", cell.conv)
    targets = {}
    if isinstance(cell.skip, FactorizedReduce):
        for i, conv in enumerate(cell.skip.convs):
            targets.update(_conv_targets(f"{prefix}.skip.conv_{i + 1}", conv))
    elif isinstance(cell.skip, UpsampleSkip):
        targets.update(_conv_targets(f"{prefix}.skip.1", cell.skip.conv))
    for i, op in enumerate(cell.ops):
        targets.update(_op_targets(f"{prefix}._ops.{i}", op))
    if cell.se is not None:
        targets.update(_dense_targets(f"{prefix}.se.se.0", cell.se.squeeze))
        targets.update(_dense_targets(f"{prefix}.se.se.2", cell.se.excite))
    return targets


def _flow_targets(prefix, paired):
    targets = {}
    for name, cell in (("cell1", paired.cell1), ("cell2", paired.cell2)):
        targets.update(_conv_targets(f"{prefix}.{name}.conv.convz.0", cell.conv_a))
        targets.update(_conv_targets(f"{prefix}.{name}.conv.convz.2", cell.conv_b))
        targets.update(_conv_targets(f"{prefix}.{name}.mu.conv_0", cell.conv_mu))
    return targets


def official_name_map(model):
    """{official state_dict name: (keras variable, transform)} for `model`.

    Special targets: ("ignored", None) for `num_batches_tracked`, and
    ("derived", source_name) for buffers that duplicate another tensor.
    """
    targets = {"prior_ftr0": (model.prior_ftr0, lambda t: np.transpose(t, (1, 2, 0)))}
    targets.update(_conv_targets("stem", model.stem))
    for tower in ("pre_process", "enc_tower", "dec_tower", "post_process"):
        for i, cell in enumerate(getattr(model, tower)):
            targets.update(_cell_targets(f"{tower}.{i}", cell))
    targets.update(_conv_targets("enc0.1", model.enc0))
    for i, conv in enumerate(model.enc_sampler):
        targets.update(_conv_targets(f"enc_sampler.{i}", conv))
    for i, conv in enumerate(model.dec_sampler):
        targets.update(_conv_targets(f"dec_sampler.{i}.1", conv))
    for i, cell in enumerate(model.nf_cells):
        targets.update(_flow_targets(f"nf_cells.{i}", cell))
    targets.update(_conv_targets("image_conditional.1", model.image_conditional))
    return targets


def _strip_prefix(state_dict):
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def load_official_state_dict(model, state_dict):
    """Assign an official NVAE state dict to `model`, tensor by tensor.

    Args:
        model: a built `keras_nvae.NVAE` whose configuration matches the
            checkpoint (see `config_from_official_args`).
        state_dict: {official name: numpy array (or torch tensor)}.

    Returns:
        The model.

    Raises:
        CheckpointError: a tensor of the model has no entry in the state dict,
            a state dict entry is not used, or shapes differ. Nothing is
            assigned in that case.
    """
    state_dict = {k: _to_numpy(v) for k, v in _strip_prefix(state_dict).items()}
    targets = official_name_map(model)
    missing = sorted(set(targets) - set(state_dict))
    unused = sorted(set(state_dict) - set(targets))
    if missing or unused:
        lines = []
        if missing:
            lines.append(f"{len(missing)} model tensor(s) missing from the state dict: {missing[:10]}")
        if unused:
            lines.append(f"{len(unused)} state dict tensor(s) not used by the model: {unused[:10]}")
        raise CheckpointError(
            "The official state dict does not match this NVAE configuration ("
            + "; ".join(lines)
            + "). Build the model with config_from_official_args(checkpoint['args'])."
        )
    assignments = []
    for name, (variable, transform) in targets.items():
        value = state_dict[name]
        if isinstance(variable, str):
            if variable == "derived" and not np.allclose(value, state_dict[transform], atol=1e-6):
                raise CheckpointError(
                    f"State dict tensor {name!r} should equal {transform!r} but does not; "
                    "the checkpoint is corrupt."
                )
            continue
        value = transform(value) if transform is not None else value
        if tuple(value.shape) != tuple(variable.shape):
            raise CheckpointError(
                f"Shape mismatch for {name!r}: checkpoint {tuple(value.shape)} (after "
                f"layout conversion) vs model {tuple(variable.shape)} ({variable.path})."
            )
        assignments.append((variable, value))
    for variable, value in assignments:
        variable.assign(value.astype(variable.dtype))
    model.spectral_regularizer.initialized.assign(0)
    return model


def _to_numpy(value):
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _read_checkpoint(path):
    """(args dict, state dict) from an official `.pt` or a `.npz` export."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"No checkpoint at {path!r}.")
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except Exception as error:  # zipfile/numpy errors for corrupt files
            raise CheckpointError(f"{path!r} is not a readable .npz file: {error}") from error
        args_key = next((k for k in ("args_json", "config_json") if k in arrays), None)
        if args_key is None:
            raise CheckpointError(
                f"{path!r} has no 'args_json' entry holding the official train.py flags."
            )
        try:
            args = json.loads(str(arrays.pop(args_key)))
        except (ValueError, TypeError) as error:
            raise CheckpointError(f"{path!r}: {args_key!r} is not valid JSON: {error}") from error
        prefix = "param/" if any(k.startswith("param/") for k in arrays) else ""
        state = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        return args, state
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            "Reading an official PyTorch checkpoint needs torch: "
            "pip install 'keras_nvae[convert]' (or convert it to .npz on a machine "
            "with torch)."
        ) from error
    try:
        # The official checkpoint pickles an argparse.Namespace, so it cannot be
        # read with weights_only=True. Only load checkpoints you trust.
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise CheckpointError(f"Could not read {path!r} as a PyTorch checkpoint: {error}") from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "args" not in checkpoint:
        raise CheckpointError(
            f"{path!r} is not an official NVAE checkpoint (expected a dict with "
            "'args' and 'state_dict')."
        )
    return checkpoint["args"], checkpoint["state_dict"]


def load_official_checkpoint(path, **overrides):
    """Build an `NVAE` from an official checkpoint and load its weights.

    Args:
        path: the official `checkpoint.pt` (needs torch, the
            `keras_nvae[convert]` extra) or a `.npz` with the flags under
            "args_json" and the state dict under "param/<name>" (no torch).
        **overrides: `NVAEConfig` fields to set (e.g. `official_dmol=True`).

    Returns:
        A ready `keras_nvae.NVAE`.
    """
    from keras_nvae.model import NVAE

    args, state_dict = _read_checkpoint(path)
    model = NVAE(config_from_official_args(args, **overrides))
    return load_official_state_dict(model, state_dict)

