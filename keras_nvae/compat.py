"""Every private Keras or TensorFlow API keras_nvae uses, in one place.

Each function names what it needs from the private API, so a Keras or
TensorFlow release that changes one of them breaks here only. Besides these
calls, `training.optimizers.NVAEAdamax` overrides `_backend_update_step` of
the TensorFlow-backend optimizer and calls its `_all_reduce_sum_gradients` and
`_get_variable_index`: the hooks Keras' own fused optimizers use.
"""

import io

import tensorflow as tf
from keras.src.saving import saving_lib


def load_state(saveable, store):
    """Load the variables of `saveable` and its children from a `.keras` weights store.

    Args:
        saveable: a layer or model.
        store: the `H5IOStore` of the file being loaded.
    """
    saving_lib._load_state(saveable, store, None, inner_path="", visited_saveables=set())


def in_memory_store_of(saveable):
    """A `.keras` weights store in memory holding the variables of `saveable`.

    Args:
        saveable: a layer or model.

    Returns:
        The `H5IOStore`, open for reading through its `h5_file`.
    """
    store = saving_lib.H5IOStore(io.BytesIO(), mode="w")
    saving_lib._save_state(saveable, store, None, inner_path="", visited_saveables=set())
    return store


def direct_sublayers(layer):
    """The layers `layer` tracks directly, in the order Keras flattens them."""
    return layer._layers


def merge_call(function, optimizer, *args):
    """Run `function(strategy, *args)` in cross-replica context under `optimizer`'s strategy.

    Args:
        function: called with the distribution strategy and `args`.
        optimizer: a Keras optimizer on the TensorFlow backend.
        *args: passed to `function`.
    """
    tf.__internal__.distribute.interim.maybe_merge_call(
        function, optimizer._distribution_strategy, *args
    )
