"""Read `.keras` files written before the per-group layout (keras_nvae < 0.2).

Those files store the network the way the official code lists it (`enc_tower`,
`dec_tower`, `enc_sampler`, `dec_sampler`, `nf_cells`, ... as attributes of the
model); from 0.2 `NVAE` keeps the parts of each latent group in a
`LatentGroup`. Keras finds weights by the attribute path of their layer, so an
old file is read through a view of the model that has the old attributes and
the old order, then handed on to Keras in the current layout.
"""

import warnings

import keras
import numpy as np

from keras_nvae import compat
from keras_nvae.official import layout as official_layout
from keras_nvae.training.optimizers import NVAEAdamax

_LEGACY_ROOT_GROUPS = ("enc_tower", "dec_tower")


def is_legacy_store(store):
    """Whether a Keras weights store holds the pre-0.2 NVAE layout."""
    h5_file = getattr(store, "h5_file", None)
    return h5_file is not None and all(name in h5_file for name in _LEGACY_ROOT_GROUPS)


class _LegacyView(keras.Model):
    """The model's layers under the attribute names and order of keras_nvae < 0.2."""

    def __init__(self, model):
        super().__init__(name="legacy_view")
        self.prior_ftr0 = model.prior_ftr0
        self.global_step = model.global_step
        self.total_steps = model.total_steps
        modules = official_layout.official_modules(model)
        self.stem = modules["stem"]
        self.pre_process = list(modules["pre_process"])
        self.enc_tower = list(modules["enc_tower"])
        self.enc0 = modules["enc0"]
        self.enc_sampler, self.dec_sampler, self.nf_cells = [], [], []
        flows = iter(modules["nf_cells"])
        for index, posterior_head in enumerate(modules["enc_sampler"]):
            self.enc_sampler.append(posterior_head)
            for _ in range(model.config.num_flows):
                self.nf_cells.append(next(flows))
            if index > 0:
                self.dec_sampler.append(modules["dec_sampler"][index - 1])
        self.dec_tower = list(modules["dec_tower"])
        self.post_process = list(modules["post_process"])
        self.image_conditional = modules["image_conditional"]
        self.spectral_regularizer = model.spectral_regularizer



def load_legacy_weights(model, store):
    """Load a pre-0.2 weights store into `model` and rewrite it in the current layout.

    Every weight, BN statistic and the step counters are read through the
    legacy view; the optimizer's flat Adamax slots are reordered to the
    current variable order. Afterwards `store` serves the current layout, so
    Keras' own loading of the model's children finds what it expects.

    Args:
        model: the `NVAE` being loaded.
        store: the Keras H5 weights store of the file.
    """
    view = _LegacyView(model)
    compat.load_state(view, store)
    if model.optimizer is not None and "optimizer" in store.h5_file:
        _load_legacy_optimizer(model, view.trainable_variables, store.h5_file["optimizer/vars"])
    current = compat.in_memory_store_of(model)
    store.h5_file = current.h5_file
    store.legacy_source = current
    store.get("")  # The store reads the root's own variables next.


def _load_legacy_optimizer(model, legacy_order, legacy_vars):
    optimizer = model.optimizer
    if not isinstance(optimizer, NVAEAdamax):
        warnings.warn(
            "This .keras file was written by keras_nvae < 0.2 with a "
            f"{type(optimizer).__name__} optimizer, whose state cannot be reordered "
            "to the current layout; the optimizer starts afresh (weights and step "
            "counters are restored).",
            stacklevel=3,
        )
        return
    iterations, momentum, norm = (np.asarray(legacy_vars[str(i)]) for i in range(3))
    current_order = model.trainable_variables
    optimizer.iterations.assign(iterations)
    optimizer._momentum.assign(_reorder_flat(momentum, legacy_order, current_order))
    optimizer._norm.assign(_reorder_flat(norm, legacy_order, current_order))


def _reorder_flat(flat, legacy_order, current_order):
    """A flat per-variable slot vector, from `legacy_order` to `current_order`."""
    segments, offset = {}, 0
    for variable in legacy_order:
        size = int(np.prod(variable.shape))
        segments[id(variable)] = flat[offset : offset + size]
        offset += size
    return np.concatenate([segments[id(variable)] for variable in current_order])
