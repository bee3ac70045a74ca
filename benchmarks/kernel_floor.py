"""Lower bound on a train step's time: its convolution and matrix kernels alone.

Traces one forward + backward pass (`tape.gradient` of `compute_objective`) of a
preset at a batch size, lists every convolution / matrix-product op in that graph
with its static shapes, FLOPs and count, and times each distinct op in isolation
on this machine (eager, median of `--repeats` runs, minus the eager dispatch
overhead of a no-op). The sum of count x time is the time a step spends in those
kernels when each runs alone and at full speed: no train step built from the
same kernels can be faster, whatever the framework around them does. With
`--torch` the same ops are also timed with PyTorch's kernels (the official
implementation's), float32, NCHW as the official code runs them.

The optimizer update, BatchNorm, activations and the rest of the step come on
top of this floor; compare it with `train_throughput.py`'s step time.

Examples:

    python benchmarks/kernel_floor.py --preset mnist --batch_size 32 --torch
    python benchmarks/kernel_floor.py --preset mnist --batch_size 32 \
        --mixed_precision mixed_bfloat16 --target_s_per_step 1.43

Prints a table by op type and writes JSON (default
`benchmarks/results/<preset>_b<batch>_kernel_floor.json`).
"""

import argparse
import collections
import json
import os
import statistics
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))

# The op types counted: convolutions with their gradients, and matrix products.
CONV_OPS = (
    "Conv2D",
    "Conv2DBackpropInput",
    "Conv2DBackpropFilter",
    "DepthwiseConv2dNative",
    "DepthwiseConv2dNativeBackpropInput",
    "DepthwiseConv2dNativeBackpropFilter",
)
MATRIX_OPS = ("MatMul", "BatchMatMulV2")
KERNEL_OPS = CONV_OPS + MATRIX_OPS


def build_parser():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--preset", default="mnist")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument(
        "--mixed_precision",
        default="none",
        choices=("none", "mixed_float16", "mixed_bfloat16"),
        help="Keras global dtype policy while tracing (kernels then run in its dtype)",
    )
    p.add_argument("--repeats", type=int, default=7, help="timed runs per distinct op")
    p.add_argument(
        "--torch", action="store_true", help="also time the ops with PyTorch (float32)"
    )
    p.add_argument(
        "--target_s_per_step",
        type=float,
        default=None,
        help="a step time to compare the floor with (e.g. 1.5x faster than a baseline)",
    )
    p.add_argument("--output_json", default=None)
    return p


# ------------------------------------------------------------------ the graph
def trace_step_graph(preset, batch_size, mixed_precision):
    """The graph of one forward + backward pass of `preset` at `batch_size`."""
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_nvae

    if mixed_precision != "none":
        keras.mixed_precision.set_global_policy(mixed_precision)
    model = keras_nvae.NVAE.from_preset(preset)
    shape = (batch_size,) + tuple(model.config.image_shape)
    model(np.zeros((2,) + shape[1:], np.uint8))

    @tf.function(autograph=False)
    def forward_backward(images):
        with tf.GradientTape() as tape:
            loss = model.compute_objective(images, training=True)["loss"]
        return tape.gradient(loss, model.trainable_variables)

    concrete = forward_backward.get_concrete_function(tf.TensorSpec(shape, tf.uint8))
    return concrete.graph, model


def _shape(tensor):
    return tuple(int(d) for d in tensor.shape)


def _conv_geometry(op):
    """(data_shape NHWC, filter_shape HWIO-or-HWCM, out_shape) of a conv-family op."""
    if op.type in ("Conv2D", "DepthwiseConv2dNative"):
        return _shape(op.inputs[0]), _shape(op.inputs[1]), _shape(op.outputs[0])
    if op.type.endswith("BackpropInput"):  # its output is the data gradient
        return _shape(op.outputs[0]), _shape(op.inputs[1]), _shape(op.inputs[2])
    return _shape(op.inputs[0]), _shape(op.outputs[0]), _shape(op.inputs[2])


def op_flops(op):
    """Multiply-adds x 2 of one kernel op (the same count for a conv's gradients)."""
    if op.type in CONV_OPS:
        _, filt, out = _conv_geometry(op)
        n, ho, wo = out[0], out[1], out[2]
        # HWIO (conv) or HWCM (depthwise): either way in x out per position.
        return 2 * n * ho * wo * filt[0] * filt[1] * filt[2] * filt[3]
    a, b = _shape(op.inputs[0]), _shape(op.inputs[1])
    out = _shape(op.outputs[0])
    if op.type == "MatMul":
        k = a[0] if op.get_attr("transpose_a") else a[1]
    else:
        k = a[-2] if op.get_attr("adj_x") else a[-1]
    batch = 1
    for d in out[:-2]:
        batch *= d
    return 2 * batch * out[-2] * out[-1] * k


def op_signature(op):
    """Hashable description of a kernel op: type, dtype, shapes and attributes."""
    attrs = {}
    names = ("strides", "padding", "dilations", "data_format")
    names += ("transpose_a", "transpose_b", "adj_x", "adj_y")
    for name in names:
        try:
            value = op.get_attr(name)
        except ValueError:  # not an attribute of this op type
            continue
        attrs[name] = value.decode() if isinstance(value, bytes) else value
    dtype = op.outputs[0].dtype.name
    if op.type in CONV_OPS:
        data, filt, out = _conv_geometry(op)
        shapes = {"data": data, "filter": filt, "out": out}
    else:
        shapes = {"a": _shape(op.inputs[0]), "b": _shape(op.inputs[1])}
    return (op.type, dtype, json.dumps(shapes, sort_keys=True), json.dumps(attrs, sort_keys=True))


def collect_kernel_ops(graph):
    """{signature: {"count", "flops"}} over the graph and its nested functions."""
    ops = collections.OrderedDict()

    def visit(g):
        for op in g.get_operations():
            if op.type in KERNEL_OPS:
                sig = op_signature(op)
                entry = ops.setdefault(sig, {"count": 0, "flops": op_flops(op)})
                entry["count"] += 1
        # Functions the graph calls (private TF attribute; best effort: ops
        # that are missed only make the floor lower).
        for fn in getattr(g, "_functions", {}).values():
            if hasattr(fn, "graph"):
                visit(fn.graph)

    visit(graph)
    return ops


# ------------------------------------------------------------------ timing
def _median_time(fn, repeats):
    fn()
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def tf_kernel(signature):
    """A no-argument callable that runs the op of `signature` once with TF."""
    import tensorflow as tf

    op_type, dtype, shapes, attrs = signature
    shapes, attrs = json.loads(shapes), json.loads(attrs)
    dtype = tf.as_dtype(dtype)

    def rand(shape):
        return tf.cast(tf.random.normal(shape), dtype)

    if op_type in CONV_OPS:
        conv = {k: attrs[k] for k in ("strides", "padding", "dilations", "data_format")}
        data, filt, out = shapes["data"], shapes["filter"], shapes["out"]
        raw = getattr(tf.raw_ops, op_type)
        if op_type in ("Conv2D", "DepthwiseConv2dNative"):
            x, w = rand(data), rand(filt)
            call = lambda: raw(input=x, filter=w, **conv)
        elif op_type.endswith("BackpropInput"):
            w, dy = rand(filt), rand(out)
            sizes = tf.constant(data, tf.int32)
            call = lambda: raw(input_sizes=sizes, filter=w, out_backprop=dy, **conv)
        else:
            x, dy = rand(data), rand(out)
            sizes = tf.constant(filt, tf.int32)
            call = lambda: raw(input=x, filter_sizes=sizes, out_backprop=dy, **conv)
    elif op_type == "MatMul":
        a, b = rand(shapes["a"]), rand(shapes["b"])
        call = lambda: tf.raw_ops.MatMul(
            a=a, b=b, transpose_a=attrs["transpose_a"], transpose_b=attrs["transpose_b"]
        )
    else:
        a, b = rand(shapes["a"]), rand(shapes["b"])
        call = lambda: tf.raw_ops.BatchMatMulV2(x=a, y=b, adj_x=attrs["adj_x"], adj_y=attrs["adj_y"])
    return lambda: call()._numpy()


def torch_kernel(signature):
    """The same op with PyTorch (float32, NCHW), or None when it has no equivalent."""
    import torch

    op_type, _, shapes, attrs = signature
    shapes, attrs = json.loads(shapes), json.loads(attrs)
    f32 = torch.float32

    def nchw(shape):
        n, h, w, c = shape
        return torch.randn(n, c, h, w, dtype=f32)

    if op_type in CONV_OPS:
        if (
            attrs["dilations"] != [1, 1, 1, 1]
            or attrs["padding"] not in ("SAME", "VALID")
            or attrs["data_format"] != "NHWC"
        ):
            return None
        data, filt, out = shapes["data"], shapes["filter"], shapes["out"]
        stride = attrs["strides"][1]
        kh, kw = filt[0], filt[1]
        # TF's SAME padding; where it puts one more row/column after than
        # before (PyTorch pads symmetrically), PyTorch gets the input padded.
        padded, padding = list(data), [0, 0]
        if attrs["padding"] == "SAME":
            for i, (dim, k) in enumerate(((1, kh), (2, kw))):
                total = max((out[dim] - 1) * stride + k - data[dim], 0)
                if total % 2:
                    padded[dim] += total
                else:
                    padding[i] = total // 2
        depthwise = op_type.startswith("Depthwise")
        channels = data[3]
        if depthwise:
            weight = torch.randn(channels * filt[3], 1, kh, kw, dtype=f32)
            groups = channels
        else:
            weight = torch.randn(filt[3], filt[2], kh, kw, dtype=f32)
            groups = 1
        x, dy = nchw(padded), nchw(out)
        if op_type in ("Conv2D", "DepthwiseConv2dNative"):
            return lambda: torch.nn.functional.conv2d(x, weight, None, stride, padding, 1, groups)
        mask = [op_type.endswith("BackpropInput"), op_type.endswith("BackpropFilter"), False]
        return lambda: torch.ops.aten.convolution_backward(
            dy, x, weight, None, (stride, stride), padding, (1, 1), False, (0, 0), groups, mask
        )
    a, b = torch.randn(*shapes["a"], dtype=f32), torch.randn(*shapes["b"], dtype=f32)
    if op_type == "MatMul":
        ta, tb = attrs["transpose_a"], attrs["transpose_b"]
    else:
        ta, tb = attrs["adj_x"], attrs["adj_y"]
    return lambda: torch.matmul(a.mT if ta else a, b.mT if tb else b)


def dispatch_overhead(repeats):
    """Median time of a trivial eager op: subtracted from every kernel time."""
    import tensorflow as tf

    x = tf.zeros((1,))
    return _median_time(lambda: tf.raw_ops.Identity(input=x)._numpy(), repeats * 5)


# ------------------------------------------------------------------ report
def main(argv=None):
    args = build_parser().parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    t0 = time.perf_counter()
    graph, model = trace_step_graph(args.preset, args.batch_size, args.mixed_precision)
    kernels = collect_kernel_ops(graph)
    trace_s = time.perf_counter() - t0
    print(
        f"traced forward+backward of {args.preset} (batch {args.batch_size}, "
        f"{args.mixed_precision}) in {trace_s:.0f}s: {len(kernels)} distinct kernel ops",
        file=sys.stderr,
    )

    overhead = dispatch_overhead(args.repeats)
    if args.torch:
        import torch

        torch.set_num_threads(os.cpu_count())
    rows = []
    for i, (sig, entry) in enumerate(kernels.items()):
        tf_s = max(_median_time(tf_kernel(sig), args.repeats) - overhead, 0.0)
        row = {
            "op": sig[0],
            "dtype": sig[1],
            "shapes": json.loads(sig[2]),
            "attrs": json.loads(sig[3]),
            "count": entry["count"],
            "flops": entry["flops"],
            "tf_s": tf_s,
        }
        if args.torch:
            fn = torch_kernel(sig)
            row["torch_s"] = _median_time(fn, args.repeats) if fn is not None else None
        rows.append(row)
        if (i + 1) % 25 == 0:
            print(f"timed {i + 1}/{len(kernels)}", file=sys.stderr)

    by_type = collections.OrderedDict()
    for row in rows:
        t = by_type.setdefault(row["op"], {"count": 0, "gflops": 0.0, "tf_s": 0.0, "torch_s": 0.0})
        t["count"] += row["count"]
        t["gflops"] += row["count"] * row["flops"] / 1e9
        t["tf_s"] += row["count"] * row["tf_s"]
        if args.torch and row.get("torch_s") is not None:
            t["torch_s"] += row["count"] * row["torch_s"]
    total = {
        "count": sum(t["count"] for t in by_type.values()),
        "gflops": sum(t["gflops"] for t in by_type.values()),
        "tf_s": sum(t["tf_s"] for t in by_type.values()),
        "torch_s": sum(t["torch_s"] for t in by_type.values()),
    }
    untimed_torch = sum(r["count"] for r in rows if args.torch and r.get("torch_s") is None)

    header = f"{'op type':38s} {'ops':>6s} {'GFLOP':>8s} {'TF s':>8s} {'TF GFLOP/s':>11s}"
    if args.torch:
        header += f" {'torch s':>8s} {'torch GFLOP/s':>14s}"
    print(
        f"\nkernel floor: preset={args.preset} batch={args.batch_size} "
        f"dtype policy={args.mixed_precision} (one forward+backward, no remat)"
    )
    print(header)
    print("-" * len(header))
    for name, t in list(by_type.items()) + [("total", total)]:
        line = (
            f"{name:38s} {t['count']:6d} {t['gflops']:8.1f} {t['tf_s']:8.3f} "
            f"{t['gflops'] / max(t['tf_s'], 1e-9):11.1f}"
        )
        if args.torch:
            line += f" {t['torch_s']:8.3f} {t['gflops'] / max(t['torch_s'], 1e-9):14.1f}"
        print(line)
    if untimed_torch:
        print(f"({untimed_torch} ops have no plain PyTorch equivalent and are left out of torch s)")
    print(f"eager dispatch overhead subtracted per op: {overhead * 1e6:.0f} us")
    if args.target_s_per_step:
        print(
            f"target {args.target_s_per_step:.3f} s/step: the TF kernels alone take "
            f"{total['tf_s'] / args.target_s_per_step:.2f}x of it"
        )

    out_path = args.output_json or os.path.join(
        _HERE, "results", f"{args.preset}_b{args.batch_size}_kernel_floor.json"
    )
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(
            {
                "preset": args.preset,
                "batch_size": args.batch_size,
                "mixed_precision": args.mixed_precision,
                "num_params": int(model.count_params()),
                "dispatch_overhead_s": overhead,
                "by_type": by_type,
                "total": total,
                "ops": rows,
                "loadavg": os.getloadavg(),
            },
            f,
            indent=2,
        )
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
