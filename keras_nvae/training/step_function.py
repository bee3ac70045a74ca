"""Train and test functions that keep only TensorFlow's runtime copy of the step's graph.

Keras traces `train_step` inside two nested `tf.function`s and keeps, for
each, the Python `FuncGraph` it was traced into (its Python operation objects
and their C++ graph), next to the copy TensorFlow's runtime executes; every
`tf.custom_gradient` in the step also registers a gradient function that holds
the graph for good. For NVAE that Python copy is a large part of a step's
fixed memory (BUILD_NOTES.md, "The train function"). `RuntimeStepFunction`
traces the whole step (`iterator.get_next()` and `train_step` or `test_step`)
into one graph, registers it with the runtime and lets the Python graph go
before the first call.
"""

import contextlib
import functools
import gc

import tensorflow as tf
from tensorflow.python.eager import context
from tensorflow.python.framework import ops


class RuntimeStepFunction:
    """Runs `step_fn` on the next element of a `tf.data.Iterator`, as one graph.

    One graph is traced per element spec of the iterators it is called with
    (a new epoch's iterator has the same spec and reuses it). Inputs that are
    not a `tf.data.Iterator` (e.g. `train_on_batch`'s list of one batch) go
    to `fallback`, Keras's own function.

    Args:
        step_fn: function of one batch returning a dict of tensors (a model's
            `train_step` or `test_step`).
        fallback: function called with any other input.

    Returns (when called with an iterator):
        `step_fn`'s dict of tensors for the iterator's next element.

    Example:

    >>> model.make_train_function()
    >>> model.train_function = RuntimeStepFunction(
    ...     model.train_step, model.train_function)
    >>> logs = model.train_function(iter(dataset))
    """

    def __init__(self, step_fn, fallback):
        self._step_fn = step_fn
        self._fallback = fallback
        self._calls = {}

    def __call__(self, iterator):
        if not isinstance(iterator, tf.data.Iterator):
            return self._fallback(iterator)
        key = repr(iterator.element_spec)
        call = self._calls.get(key)
        if call is None:
            call = self._calls[key] = _runtime_call(self._step_fn, iterator)
        return call(iterator)


class RuntimeStepFunctions:
    """Train and test functions as `RuntimeStepFunction`s: a mixin for `keras.Model`s.

    Without XLA, a distribution strategy or `steps_per_execution`, `fit`,
    `evaluate` and validation run the model's steps as `RuntimeStepFunction`s:
    the same steps, without the Python copies of their graphs. Otherwise, and
    where this TensorFlow lacks what they need (`is_supported`), Keras's own.

    Example:

    >>> class MyModel(RuntimeStepFunctions, keras.Model):
    ...     ...
    """

    def make_train_function(self, force=False):
        if self.train_function is None or force:
            super().make_train_function(force=force)
            if self._runs_runtime_step_functions():
                self.train_function = RuntimeStepFunction(self.train_step, self.train_function)
        return self.train_function

    def make_test_function(self, force=False):
        if self.test_function is None or force:
            super().make_test_function(force=force)
            if self._runs_runtime_step_functions():
                self.test_function = RuntimeStepFunction(self.test_step, self.test_function)
        return self.test_function

    def _runs_runtime_step_functions(self):
        default_strategy = (
            not tf.distribute.has_strategy()
            and self.distribute_strategy is tf.distribute.get_strategy()
        )
        return (
            default_strategy
            and not self.run_eagerly
            and not self.jit_compile
            and self.steps_per_execution == 1
            and is_supported()
        )


@functools.lru_cache(maxsize=None)
def is_supported():
    """Whether this TensorFlow exposes what `RuntimeStepFunction` relies on.

    It calls the runtime function of a traced `ConcreteFunction` directly,
    which uses attributes private to TensorFlow (tested against the pinned
    version); where they are missing, NVAE keeps Keras's train function.
    """
    probe = tf.function(lambda x: x + 1.0, autograph=False)
    concrete = probe.get_concrete_function(tf.TensorSpec((), tf.float32))
    atomic = getattr(concrete, "_inference_function", None)
    return all(
        hasattr(atomic, name)
        for name in ("name", "function_type", "children", "_cached_graph", "_cached_definition")
    ) and hasattr(context.context(), "call_function") and isinstance(_gradient_registry(), dict)


def _gradient_registry():
    return getattr(getattr(ops, "_gradient_registry", None), "_registry", None)


def _runtime_call(step_fn, iterator):
    """Trace `step_fn(iterator.get_next())`, drop its Python graphs, return a caller."""

    def one_step(iterator):
        return step_fn(iterator.get_next())

    with custom_gradients_released():
        concrete = tf.function(one_step, autograph=False).get_concrete_function(iterator)
    atomic = concrete._inference_function
    captures = list(concrete.captured_inputs)
    function_type = atomic.function_type
    del concrete
    _release_graphs(atomic, set())
    # The graph is made of reference cycles: collect it now, before the first call
    # builds the runtime's executor, rather than whenever the collector next runs.
    gc.collect()

    def call(iterator):
        bound = function_type.bind(iterator)
        flat_inputs = function_type.unpack_inputs(bound) + function_type.unpack_captures(captures)
        flat_outputs = context.context().call_function(
            atomic.name, flat_inputs, len(function_type.flat_outputs)
        )
        return function_type.pack_output(flat_outputs)

    return call


@contextlib.contextmanager
def custom_gradients_released():
    """Unregister, on exit, the gradient functions `tf.custom_gradient` registered inside.

    In a graph, `tf.custom_gradient` (the fused BN-Swish-conv,
    `tf.recompute_grad`) registers its gradient function globally, for good;
    its closure holds tensors of the traced graph and so the whole graph.
    Use it around a trace whose backward pass is traced inside it, so that
    nothing needs them again.

    Example:

    >>> with custom_gradients_released():
    ...     concrete = tf.function(step).get_concrete_function(spec)
    """
    registry = _gradient_registry()
    registered = set(registry)
    try:
        yield
    finally:
        for name in set(registry) - registered:
            if name.startswith("CustomGradient-"):
                del registry[name]


def _release_graphs(atomic, seen):
    """Drop the Python graph and FunctionDef copies of `atomic` and its callees.

    The runtime keeps the functions registered as long as these
    `AtomicFunction` objects live (each holds its callees), so only the
    Python copies go.
    """
    if id(atomic) in seen:
        return
    seen.add(id(atomic))
    atomic._cached_graph = None
    atomic._cached_definition = None
    for child in atomic.children:
        _release_graphs(child, seen)
