"""Where the memory of one NVAE train step goes.

Adds up the peak RSS of a training process from parts measured or computed
independently, and prints each part next to the measured peak:

* runtime: RSS after importing TensorFlow, Keras and keras_nvae (measured);
* tensors in use at the step's peak: the peak bytes of TensorFlow's CPU
  allocator over the timed steps (`tf.config.experimental.get_memory_info`,
  measured), split into the variables (parameters and optimizer slots,
  computed from their sizes) and the rest (activations, gradients and the
  working set at that moment: the allocator's peak less the variables),
  printed beside two computed sizes for comparison: one float32 gradient
  per trainable variable, and the activations kept for the backward pass
  (every tensor of the traced forward + backward graph that a forward op
  produces and a backward op reads, sized from its static shape, summed by
  tower and by latent group; computed from the graph, before TF's graph
  optimisation);
* graph and executor state: RSS at rest after two train steps less the
  runtime and the allocator's peak so far (its pool keeps what it once
  held), from a run at a small batch (`--reference_json`), where the pool
  is small;
* allocator slack: RSS at rest less the runtime, the graph and executor
  state and the allocator's peak so far: memory held at rest beyond the
  most the pool had in use at once (the pool's fragmentation and what glibc
  keeps after `malloc_trim`); zero by construction in the reference run
  itself;
* the step's measured peak: VmHWM over the timed steps after a reset.

What these parts leave of the measured peak is the remainder: memory
allocated outside the pool during the step and freed after it (glibc,
oneDNN's own scratch). Allocations under 256 KiB bypass the pool and its
statistics, so the allocator figures of very small models are zero.

Example:

    python benchmarks/memory_breakdown.py --preset cifar10 --batch_size 1 \
        --output_json /tmp/b1.json
    python benchmarks/memory_breakdown.py --preset cifar10 --batch_size 8 \
        --reference_json /tmp/b1.json
    python benchmarks/memory_breakdown.py --preset tiny --batch_size 4 --override remat='"group"'

See benchmarks/README.md.
"""

import argparse
import collections
import contextlib
import functools
import gc
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train_throughput import (  # noqa: E402
    current_rss_bytes,
    malloc_trim,
    peak_rss_bytes,
    reset_peak_rss,
)

_GIB = 1024.0**3


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cifar10")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--mixed_precision",
        choices=("none", "mixed_float16", "mixed_bfloat16"),
        default="none",
    )
    p.add_argument("--steps", type=int, default=2, help="train steps after the reset")
    p.add_argument(
        "--trace_only",
        action="store_true",
        help="only size the activations kept for backward (trace, no training step)",
    )
    p.add_argument("--output_json", default=None)
    p.add_argument(
        "--reference_json",
        default=None,
        help="this script's JSON for the same setting at a small batch (e.g. 1): its RSS at "
        "rest, less the runtime and the allocator's peak, is the graph and executor state "
        "(at the measured batch the allocator's pool holds freed activation memory at rest)",
    )
    p.add_argument("--seed", type=int, default=0)
    return p


# ------------------------------------------------------------- graph analysis
def _bytes(tensor):
    shape = tensor.shape
    if shape.rank is None or not shape.is_fully_defined():
        return 0
    return int(shape.num_elements()) * tensor.dtype.size


_GROUP = re.compile(r"latent_group_(\d+)_(encode|decode|sample_posterior|combine)")
_GROUP_TOWERS = {
    "encode": "encoder cells",
    "decode": "decoder cells",
    "sample_posterior": "samplers, flows, combiners",
    "combine": "samplers, flows, combiners",
}


@contextlib.contextmanager
def scope_latent_groups():
    """Within the context, each `LatentGroup` method runs under a name scope naming the group.

    The groups' sublayers are called through methods, not `__call__`, so
    their ops carry no group name otherwise.
    """
    import tensorflow as tf

    from keras_nvae.layers.latent_group import LatentGroup

    def scoped(method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            with tf.name_scope(f"{self.name}_{method.__name__}"):
                return method(self, *args, **kwargs)

        return wrapper

    originals = {name: getattr(LatentGroup, name) for name in _GROUP_TOWERS}
    try:
        for name, method in originals.items():
            setattr(LatentGroup, name, scoped(method))
        yield
    finally:
        for name, method in originals.items():
            setattr(LatentGroup, name, method)


def _region(op_name):
    """(tower, group index or None) of a forward op, from its name scope."""
    match = _GROUP.search(op_name)
    if match:
        return _GROUP_TOWERS[match.group(2)], int(match.group(1))
    for key, tower in (
        ("pre_process", "stem + pre-process"),
        ("stem", "stem + pre-process"),
        ("encoder_down", "encoder down cells"),
        ("decoder_up", "decoder up cells"),
        ("post_process", "post-process + image conv"),
        ("image_conditional", "post-process + image conv"),
        ("spectral", "regularisers"),
    ):
        if key in op_name:
            return tower, None
    return "other (likelihood, losses, BN regulariser)", None


def _ops(graph):
    """Every op of `graph` and of the function bodies it calls."""
    seen = set()
    out = []

    def visit(g):
        for op in g.get_operations():
            out.append(op)
        for fn in getattr(g, "_functions", {}).values():
            body = getattr(fn, "graph", None)
            if body is not None and id(body) not in seen:
                seen.add(id(body))
                visit(body)

    visit(graph)
    return out


def kept_activations(forward_graph, train_graph):
    """Bytes of forward tensors read by backward ops, by (tower, group).

    Forward ops are the ops whose names appear in the forward-only graph;
    every other op of the forward + backward graph belongs to the backward
    pass (or the recomputation of a rematerialised block). Variable reads are
    left out (they alias the parameters).
    """
    forward = {op.name for op in _ops(forward_graph)}
    kept = collections.Counter()
    counted = set()
    for op in _ops(train_graph):
        if op.name in forward:
            continue
        for tensor in op.inputs:
            producer = tensor.op
            if producer.name not in forward or tensor.name in counted:
                continue
            if producer.type in ("ReadVariableOp", "Const", "VarHandleOp", "Placeholder"):
                continue
            counted.add(tensor.name)
            kept[_region(producer.name)] += _bytes(tensor)
    return kept


def trace_kept_activations(model, spec):
    """`kept_activations` of one training-mode objective and its gradient.

    Args:
        model: a `keras_nvae.NVAE`.
        spec: `tf.TensorSpec` of the image batch (static shape).

    Returns:
        `collections.Counter` of bytes by (tower, group index or None).
    """
    import tensorflow as tf

    from keras_nvae.training import step_function

    @tf.function(autograph=False)
    def forward(x):
        return model.compute_objective(x, training=True)["loss"]

    @tf.function(autograph=False)
    def forward_backward(x):
        with tf.GradientTape() as tape:
            loss = model.compute_objective(x, training=True)["loss"]
        return tape.gradient(loss, model.trainable_variables)

    # The traced graphs are let go (with the gradient registrations that would hold them), so
    # that the step measured afterwards holds only what training holds.
    with scope_latent_groups(), step_function.custom_gradients_released():
        kept = kept_activations(
            forward.get_concrete_function(spec).graph,
            forward_backward.get_concrete_function(spec).graph,
        )
    del forward, forward_backward
    gc.collect()
    return kept


# --------------------------------------------------------------------- worker
def _variable_bytes(variables):
    return sum(int(v.numpy().size) * v.numpy().dtype.itemsize for v in variables)


def measure(args):
    result = {"preset": args.preset, "batch_size": args.batch_size}
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import numpy as np
    import tensorflow as tf
    import keras

    import keras_nvae

    if args.mixed_precision != "none":
        keras.mixed_precision.set_global_policy(args.mixed_precision)
    keras.utils.set_random_seed(args.seed)
    result["runtime_gib"] = current_rss_bytes() / _GIB
    overrides = keras_nvae.config.parse_overrides(args.override)
    result["overrides"] = overrides
    model = keras_nvae.NVAE.from_preset(args.preset, **overrides)
    result["rss_after_build_gib"] = current_rss_bytes() / _GIB
    model.compile(total_steps=100_000, jit_compile=False)
    model.optimizer.build(model.trainable_variables)
    result["parameters_gib"] = _variable_bytes(model.weights) / _GIB
    result["optimizer_slots_gib"] = _variable_bytes(model.optimizer.variables) / _GIB
    result["gradients_gib"] = 4 * sum(int(np.prod(v.shape)) for v in model.trainable_variables) / _GIB

    shape = (args.batch_size,) + tuple(model.config.image_shape)
    images = np.random.default_rng(args.seed).integers(0, 256, shape, dtype=np.uint8)
    if model.config.likelihood == "bernoulli":
        images = (images >= 128).astype(np.uint8) * 255
    spec = tf.TensorSpec(shape, tf.uint8)

    t0 = time.perf_counter()
    kept = trace_kept_activations(model, spec)
    result["trace_s"] = time.perf_counter() - t0
    result["kept_by_region_gib"] = {
        f"{tower}|{'' if group is None else group}": n / _GIB for (tower, group), n in kept.items()
    }
    result["kept_activations_gib"] = sum(kept.values()) / _GIB
    if args.trace_only:
        return result
    dataset = iter(tf.data.Dataset.from_tensors((tf.constant(images),)).repeat())
    model.make_train_function()
    t0 = time.perf_counter()
    model.train_function(dataset)
    result["compile_s"] = time.perf_counter() - t0
    result["peak_rss_compile_gib"] = peak_rss_bytes() / _GIB
    model.train_function(dataset)
    malloc_trim()
    result["rss_at_rest_gib"] = current_rss_bytes() / _GIB
    allocator = tf.config.experimental.get_memory_info("CPU:0")
    result["allocator_at_rest_gib"] = allocator["current"] / _GIB
    result["allocator_peak_so_far_gib"] = allocator["peak"] / _GIB
    tf.config.experimental.reset_memory_stats("CPU:0")
    reset_peak_rss()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        logs = model.train_function(dataset)
        float(np.asarray(logs["loss"]))
        times.append(time.perf_counter() - t0)
    result["step_s"] = times
    result["peak_rss_step_gib"] = peak_rss_bytes() / _GIB
    result["allocator_step_peak_gib"] = tf.config.experimental.get_memory_info("CPU:0")["peak"] / _GIB
    return result


def graph_and_executor_gib(reference):
    """Graph and executor state from a run at a small batch: RSS at rest less runtime and pool."""
    return (
        reference["rss_at_rest_gib"]
        - reference["runtime_gib"]
        - reference["allocator_peak_so_far_gib"]
    )


# --------------------------------------------------------------------- report
def _towers(result):
    towers = collections.Counter()
    groups = collections.defaultdict(collections.Counter)
    for key, gib in result["kept_by_region_gib"].items():
        tower, group = key.split("|")
        towers[tower] += gib
        if group:
            groups[int(group)][tower] += gib
    return towers, groups


def _print_kept(result):
    towers, groups = _towers(result)
    print(f"  {result['kept_activations_gib']:8.3f} GiB  activations kept for backward, by tower:")
    for tower, gib in towers.most_common():
        print(f"    {gib:8.3f} GiB  {tower}")
    if groups:
        print("  activations kept, per latent group (MiB; encoder cells / decoder cells / samplers):")
        for g in sorted(groups):
            c = groups[g]
            print(
                f"    group {g:2d}: {1024 * c['encoder cells']:.1f} / {1024 * c['decoder cells']:.1f} / "
                f"{1024 * c['samplers, flows, combiners']:.1f}"
            )


def print_report(result):
    r = result
    print(f"\nmemory of one train step: preset={r['preset']} batch={r['batch_size']} "
          f"overrides={r['overrides']}")
    if "peak_rss_step_gib" not in r:
        _print_kept(r)
        return
    r["variables_gib"] = r["parameters_gib"] + r["optimizer_slots_gib"]
    r["step_tensors_gib"] = r["allocator_step_peak_gib"] - r["variables_gib"]
    r["allocator_slack_gib"] = (
        r["rss_at_rest_gib"]
        - r["runtime_gib"]
        - r["graph_and_executor_gib"]
        - r["allocator_peak_so_far_gib"]
    )
    r["sum_of_parts_gib"] = (
        r["runtime_gib"]
        + r["graph_and_executor_gib"]
        + r["allocator_step_peak_gib"]
        + r["allocator_slack_gib"]
    )
    r["remainder_gib"] = r["peak_rss_step_gib"] - r["sum_of_parts_gib"]
    rows = [
        ("runtime (TF, Keras, keras_nvae imported)", r["runtime_gib"], "measured"),
        (
            f"graph + executor state (at rest, batch {r['graph_reference_batch_size']})",
            r["graph_and_executor_gib"],
            "measured",
        ),
        ("tensors in use at the step's peak (TF allocator)", r["allocator_step_peak_gib"], "measured"),
        ("  variables: parameters + optimizer slots", r["variables_gib"], "computed"),
        ("  activations, gradients, working set", r["step_tensors_gib"], "peak - variables"),
        ("    for comparison: activations kept for backward", r["kept_activations_gib"], "computed"),
        ("    for comparison: gradients (float32)", r["gradients_gib"], "computed"),
        ("allocator slack (held at rest beyond the pool's peak)", r["allocator_slack_gib"], "measured"),
        ("sum of the parts", r["sum_of_parts_gib"], ""),
        ("measured step peak RSS", r["peak_rss_step_gib"], "measured"),
        (
            f"remainder (transient memory outside the pool): "
            f"{100 * r['remainder_gib'] / r['peak_rss_step_gib']:.1f} % of the peak",
            r["remainder_gib"],
            "",
        ),
    ]
    for name, gib, how in rows:
        print(f"  {gib:8.3f} GiB  {name}  {how}")
    _print_kept(r)
    print(f"  compile {r['compile_s']:.0f} s, steps {[round(t, 2) for t in r['step_s']]} s, "
          f"peak RSS incl. compile {r['peak_rss_compile_gib']:.2f} GiB")


def main(argv=None):
    args = build_parser().parse_args(argv)
    result = measure(args)
    reference = result
    if args.reference_json:
        with open(args.reference_json) as f:
            reference = json.load(f)
    if not args.trace_only:
        result["graph_and_executor_gib"] = graph_and_executor_gib(reference)
        result["graph_reference_batch_size"] = reference["batch_size"]
    print_report(result)
    out = args.output_json or os.path.join(
        os.path.dirname(os.path.abspath(__file__)),
        "results",
        f"memory_{args.preset}_b{args.batch_size}.json",
    )
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
