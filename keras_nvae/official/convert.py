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
import re

import numpy as np

from keras_nvae import errors
from keras_nvae.config import ARCHITECTURES, NVAEConfig
from keras_nvae.data import registry as datasets
from keras_nvae.layers.cell_ops import BNSwishConv, InvertedResidual
from keras_nvae.layers.combiners import DecoderCombiner, EncoderCombiner
from keras_nvae.layers.skips import FactorizedReduce, UpsampleSkip
from keras_nvae.official import layout as official_layout

# official --dataset value -> registry entry
_OFFICIAL_DATASETS = {
    spec.official_name: spec for spec in datasets.specs() if spec.official_name is not None
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


class OfficialCheckpointError(ValueError):
    """An official (PyTorch) checkpoint or state dict that cannot be converted.

    About files written by the official code; keras_nvae's own training saves
    raise `keras_nvae.training.checkpoint_store.CheckpointError` instead.
    """


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
    if dataset not in _OFFICIAL_DATASETS:
        raise ValueError(
            f"Official flag --dataset={dataset!r} is not supported; supported: "
            f"{sorted(_OFFICIAL_DATASETS)}."
        )
    if args.get("arch_instance", "res_mbconv") not in ARCHITECTURES:
        raise ValueError(
            f"Official flag --arch_instance={args['arch_instance']!r} is not supported; "
            f"supported: {sorted(ARCHITECTURES)}."
        )
    spec = _OFFICIAL_DATASETS[dataset]
    likelihood = spec.likelihood
    if likelihood == "dmol" and int(args["num_mixture_dec"]) == 1:
        likelihood = "normal"
    fields = {name: args[name] for name in _SAME_NAME if name in args}
    fields.update(
        image_shape=spec.image_shape,
        pad_to=spec.pad_to,
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
    modules = official_layout.official_modules(model)
    targets = {"prior_ftr0": (model.prior_ftr0, lambda t: np.transpose(t, (1, 2, 0)))}
    targets.update(_conv_targets("stem", modules["stem"]))
    for tower in ("pre_process", "enc_tower", "dec_tower", "post_process"):
        for i, cell in enumerate(modules[tower]):
            targets.update(_cell_targets(f"{tower}.{i}", cell))
    targets.update(_conv_targets("enc0.1", modules["enc0"]))
    for i, conv in enumerate(modules["enc_sampler"]):
        targets.update(_conv_targets(f"enc_sampler.{i}", conv))
    for i, conv in enumerate(modules["dec_sampler"]):
        targets.update(_conv_targets(f"dec_sampler.{i}.1", conv))
    for i, cell in enumerate(modules["nf_cells"]):
        targets.update(_flow_targets(f"nf_cells.{i}", cell))
    targets.update(_conv_targets("image_conditional.1", modules["image_conditional"]))
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
        OfficialCheckpointError: a tensor of the model has no entry in the state dict,
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
        raise OfficialCheckpointError(
            "The official state dict does not match this NVAE configuration ("
            + "; ".join(lines)
            + "). Build the model with config_from_official_args(checkpoint['args'])."
        )
    assignments = []
    for name, (variable, transform) in targets.items():
        value = state_dict[name]
        if isinstance(variable, str):
            if variable == "derived" and not np.allclose(value, state_dict[transform], atol=1e-6):
                raise OfficialCheckpointError(
                    f"State dict tensor {name!r} should equal {transform!r} but does not; "
                    "the checkpoint is corrupt."
                )
            continue
        value = transform(value) if transform is not None else value
        if tuple(value.shape) != tuple(variable.shape):
            raise OfficialCheckpointError(
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


# ------------------------------------------------------------------ reading files
# What an official checkpoint pickles besides tensors and plain Python values (which
# `torch.load(weights_only=True)` allows by default): the train.py flags.
_ALLOWED_PICKLE_GLOBALS = (argparse.Namespace,)

_EXPECTED_CONTENTS = (
    "an official NVAE checkpoint: a dict with 'args' (the train.py flags, an "
    "argparse.Namespace) and 'state_dict' (official parameter name -> tensor)"
)

# How torch's weights-only unpickler names a refused global (the only place it is named for
# files in the legacy, non-zip format).
_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")


def _describe(value):
    """'None', 'a list', 'an int', ... for error messages."""
    if value is None:
        return "None"
    name = type(value).__name__
    return f"{'an' if name[0].lower() in 'aeiou' else 'a'} {name}"


def _checked_contents(path, args, state_dict, args_name):
    """(flags dict, state dict) once both are what an official checkpoint holds.

    Args:
        path: the file (for messages).
        args: the flags read from the file.
        state_dict: the tensors read from the file.
        args_name: where the file keeps the flags (for messages).

    Returns:
        (args as a dict, state_dict).

    Raises:
        OfficialCheckpointError: the flags are not a dict or Namespace, or the state
            dict is not a mapping of names to arrays or tensors.
    """
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    if not isinstance(args, dict):
        raise OfficialCheckpointError(
            f"{path!r}: the train.py flags ({args_name}) are {_describe(args)}, not an "
            "argparse.Namespace or dict of flag values."
        )
    if not isinstance(state_dict, dict):
        raise OfficialCheckpointError(
            f"{path!r}: 'state_dict' is {_describe(state_dict)}, not a dict of official "
            "parameter name -> tensor."
        )
    bad = [k for k, v in state_dict.items() if not (isinstance(k, str) and hasattr(v, "shape"))]
    if bad:
        raise OfficialCheckpointError(
            f"{path!r}: 'state_dict' entries {bad[:5]} are not official parameter "
            "name -> tensor pairs."
        )
    return args, state_dict


def _read_npz(path):
    """(flags dict, state dict) from a `.npz` export of an official checkpoint."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except Exception as error:  # zipfile/numpy errors for corrupt files
        raise OfficialCheckpointError(f"{path!r} is not a readable .npz file: {error}") from error
    args_key = next((k for k in ("args_json", "config_json") if k in arrays), None)
    if args_key is None:
        raise OfficialCheckpointError(
            f"{path!r} has no 'args_json' entry holding the official train.py flags."
        )
    try:
        args = json.loads(str(arrays.pop(args_key)))
    except (ValueError, TypeError) as error:
        raise OfficialCheckpointError(
            f"{path!r}: {args_key!r} is not valid JSON: {error}"
        ) from error
    prefix = "param/" if any(k.startswith("param/") for k in arrays) else ""
    state = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    return _checked_contents(path, args, state, repr(args_key))


def _import_torch():
    """torch, if it can read checkpoints safely (>= 2.5); ImportError saying what to install."""
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            "Reading an official PyTorch checkpoint needs torch: "
            "pip install 'keras_nvae[convert]' (or convert it to .npz on a machine "
            "with torch)."
        ) from error
    needed = ("safe_globals", "get_unsafe_globals_in_checkpoint")
    if not all(hasattr(torch.serialization, name) for name in needed):
        raise ImportError(
            f"Reading an official PyTorch checkpoint safely needs torch >= 2.5 (installed: "
            f"{torch.__version__}): pip install 'keras_nvae[convert]'."
        )
    return torch


def _torch_error_summary(error):
    """The first sentence of what torch.load said, without its advice to unpickle unsafely."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    sentence = errors.first_line(text, limit=len(text), with_type=False)
    sentence = sentence.split(". ")[0].rstrip(".")
    return f"{type(error).__name__}: {sentence}" if sentence else type(error).__name__


def _unreadable_torch_file(torch, path, error):
    """The OfficialCheckpointError for a `.pt` file that `torch.load` refused or could not read.

    Call it inside the `safe_globals` context, so the allowed globals are not reported.
    """
    try:
        refused = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip archive from torch.save: the legacy format, or not a checkpoint
        refused = _REFUSED_GLOBAL.findall(str(error))
    if refused:
        return OfficialCheckpointError(
            f"Refused to load {path!r}: it references {', '.join(sorted(refused))}, which an "
            "official NVAE checkpoint never contains (unpickling it could run code from the "
            "file; nothing from it was run). Only tensors, plain Python values and "
            "argparse.Namespace are allowed."
        )
    return OfficialCheckpointError(
        f"{path!r} is not a readable PyTorch checkpoint ({_torch_error_summary(error)}); "
        f"expected {_EXPECTED_CONTENTS}, as saved by torch.save."
    )


def _read_torch_checkpoint(path):
    """(flags dict, state dict) from an official `.pt`, unpickling nothing but data.

    `torch.load(weights_only=True)` builds only tensors and plain Python values, plus the
    globals allowed for this call alone (`argparse.Namespace`); any other global in the
    pickle is refused before it is called.
    """
    torch = _import_torch()
    with torch.serialization.safe_globals(list(_ALLOWED_PICKLE_GLOBALS)):
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # UnpicklingError, RuntimeError (zip), EOFError, ...
            # torch's message advises weights_only=False; ours names what was refused.
            raise _unreadable_torch_file(torch, path, error) from None
    if not isinstance(checkpoint, dict):
        raise OfficialCheckpointError(
            f"{path!r} holds {_describe(checkpoint)}, not {_EXPECTED_CONTENTS}."
        )
    missing = [key for key in ("args", "state_dict") if key not in checkpoint]
    if missing:
        keys = sorted(str(key) for key in checkpoint)
        raise OfficialCheckpointError(
            f"{path!r} holds a dict with keys {keys[:10]}, without {missing}; "
            f"expected {_EXPECTED_CONTENTS}."
        )
    return _checked_contents(path, checkpoint["args"], checkpoint["state_dict"], "'args'")


def _read_checkpoint(path):
    """(flags dict, state dict) from an official `.pt` or a `.npz` export."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"No checkpoint at {path!r}.")
    if path.endswith(".npz"):
        return _read_npz(path)
    return _read_torch_checkpoint(path)


def load_official_checkpoint(path, **overrides):
    """Build an `NVAE` from an official checkpoint and load its weights.

    Args:
        path: the official `checkpoint.pt` (needs torch, the
            `keras_nvae[convert]` extra) or a `.npz` with the flags under
            "args_json" and the state dict under "param/<name>" (no torch).
        **overrides: `NVAEConfig` fields to set (e.g. `official_dmol=True`).

    Returns:
        A ready `keras_nvae.NVAE`.

    Raises:
        FileNotFoundError: no file at `path`.
        ImportError: a `.pt` file and no torch >= 2.5.
        OfficialCheckpointError: the file is not an official NVAE checkpoint, or its
            pickle references anything but tensors, plain Python values and
            `argparse.Namespace` (refused without running it: `.pt` files are
            read with `torch.load(weights_only=True)`), or its tensors do not
            match the flags.
        ValueError: flags the library does not support.
    """
    from keras_nvae.model import NVAE

    args, state_dict = _read_checkpoint(path)
    model = NVAE(config_from_official_args(args, **overrides))
    return load_official_state_dict(model, state_dict)

