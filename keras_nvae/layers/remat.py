"""Gradient checkpointing (rematerialisation) that keeps BatchNorm statistics right."""

import threading

import tensorflow as tf

_state = threading.local()


def is_recomputing():
    """Whether a rematerialised function is being re-run for the backward pass.

    Layers with side effects check this: `BatchNorm` does not update its
    moving statistics a second time while its forward pass is recomputed.

    Returns:
        bool.
    """
    return getattr(_state, "recomputing", False)


def rematerialize(fn, *tensors):
    """Calls `fn(*tensors)` without keeping its intermediate activations.

    The backward pass runs `fn` again to rebuild them (`tf.recompute_grad`), so
    the memory for activations inside `fn` is traded for one more forward
    pass. During that re-run `is_recomputing()` is True, so BatchNorm moving
    statistics are updated once per step, not twice. `fn` must be
    deterministic (no random ops): a re-run would draw different noise.

    Args:
        fn: callable taking and returning tensors; it may read (and create)
            variables. Python values such as `training` are captured by
            closure, since the gradient machinery accepts only positional
            tensors.
        *tensors: the tensors to call `fn` with.

    Returns:
        What `fn(*tensors)` returns.

    Example:
    ```python
    cell = keras_nvae.layers.ResidualCell(16, "normal_dec", ("mbconv_e6",))
    y = rematerialize(lambda t: cell(t, training=True), x)
    ```
    """
    ran = False

    def flagged(*args):
        nonlocal ran
        outer = is_recomputing()
        _state.recomputing = outer or ran  # every call after the first is the re-run
        ran = True
        try:
            return fn(*args)
        finally:
            _state.recomputing = outer

    return tf.recompute_grad(flagged)(*tensors)
