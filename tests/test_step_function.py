"""`RuntimeStepFunction`: the same training as Keras's train function, without its Python graphs."""

import gc
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf

from harness import REORDERED_RTOL, lean_tiny, model_state, tiny_images
from keras_nvae.training import step_function


def _dataset(n=8, batch_size=4):
    return tf.data.Dataset.from_tensor_slices(tiny_images(n)).batch(batch_size)


def _fit(runtime, epochs=2, **overrides):
    keras.utils.set_random_seed(3)
    model = lean_tiny(**overrides)
    model.compile()
    if not runtime:
        model._runs_runtime_step_functions = lambda: False
    history = model.fit(_dataset(), epochs=epochs, verbose=0)
    return model, history.history


def test_the_pinned_tensorflow_supports_it():
    # On another TF the model falls back to Keras's function; here the tests below must run it.
    assert step_function.is_supported()


# "group" recomputes through `tf.recompute_grad`, whose gradient registrations are dropped.
@pytest.mark.parametrize("remat", [False, "group"])
def test_fit_trains_the_same_as_keras_train_function(remat):
    ours, ours_history = _fit(runtime=True, remat=remat)
    assert isinstance(ours.train_function, step_function.RuntimeStepFunction)
    keras_model, keras_history = _fit(runtime=False, remat=remat)
    assert not isinstance(keras_model.train_function, step_function.RuntimeStepFunction)
    for name in ("loss", "kl", "recon"):
        np.testing.assert_allclose(ours_history[name], keras_history[name], rtol=REORDERED_RTOL)
    # Every variable: weights, BN statistics, optimizer slots, step counters, metrics.
    for (path, a), (_, b) in zip(model_state(ours), model_state(keras_model)):
        scale = max(float(np.max(np.abs(b))), 1e-30) if b.size else 1.0
        assert np.max(np.abs(a - b), initial=0.0) <= REORDERED_RTOL * scale + 1e-7, path


def test_one_graph_per_element_spec_and_train_on_batch_falls_back():
    model, _ = _fit(runtime=True, epochs=2)
    # Two epochs, two iterators of one spec: one traced graph.
    assert len(model.train_function._calls) == 1
    before = int(model.global_step.numpy())
    model.train_on_batch(tiny_images(4))
    assert int(model.global_step.numpy()) == before + 1
    assert len(model.train_function._calls) == 1


def test_the_python_graph_is_released_before_the_first_call():
    keras.utils.set_random_seed(0)
    model = lean_tiny()
    model.compile()
    model.optimizer.build(model.trainable_variables)  # as `fit` does before tracing
    graphs = []
    step = model.train_step

    def recording_step(batch):
        graphs.append(weakref.ref(tf.compat.v1.get_default_graph()))
        return step(batch)

    function = step_function.RuntimeStepFunction(recording_step, fallback=None)
    logs = function(iter(_dataset().repeat()))
    gc.collect()
    assert len(graphs) == 1
    assert graphs[0]() is None, "the traced FuncGraph is still referenced"
    assert np.isfinite(float(logs["loss"]))
    # Later calls run the runtime's copy: the step counter moves once per call.
    function(iter(_dataset().repeat()))
    assert int(model.global_step.numpy()) == 2


def test_errors_raised_by_the_step_reach_the_caller():
    model = lean_tiny()
    model.compile()
    function = step_function.RuntimeStepFunction(model.train_step, fallback=None)
    exhausted = iter(tf.data.Dataset.from_tensor_slices(tiny_images(4)).batch(4).skip(1))
    with pytest.raises(tf.errors.OutOfRangeError):
        function(exhausted)


def test_evaluate_runs_one_runtime_graph_and_matches_keras():
    ours, _ = _fit(runtime=True, epochs=1)
    keras_model, _ = _fit(runtime=False, epochs=1)
    ours_logs = ours.evaluate(_dataset(), verbose=0, return_dict=True)
    keras_logs = keras_model.evaluate(_dataset(), verbose=0, return_dict=True)
    assert isinstance(ours.test_function, step_function.RuntimeStepFunction)
    assert len(ours.test_function._calls) == 1
    for name in ("loss", "nelbo", "kl", "recon"):
        np.testing.assert_allclose(ours_logs[name], keras_logs[name], rtol=REORDERED_RTOL)
