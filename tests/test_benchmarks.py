"""The benchmark scripts' own arithmetic (not timings): FLOP counts and op lists."""

import importlib.util
import json
import os

import numpy as np
import tensorflow as tf

_BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(_BENCHMARKS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


kernel_floor = _load("kernel_floor")


def _forward_backward_graph():
    """A 3x3 conv (stride 1 and 2), a depthwise 5x5 conv and a matmul, with gradients."""
    conv = tf.Variable(tf.random.normal((3, 3, 4, 6)))
    strided = tf.Variable(tf.random.normal((3, 3, 6, 6)))
    depthwise = tf.Variable(tf.random.normal((5, 5, 6, 1)))
    dense = tf.Variable(tf.random.normal((6, 5)))

    @tf.function(autograph=False)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            h = tf.nn.conv2d(x, conv, 1, "SAME")
            h = tf.nn.conv2d(h, strided, 2, "SAME")
            h = tf.nn.depthwise_conv2d(h, depthwise, [1, 1, 1, 1], "SAME")
            y = tf.matmul(tf.reshape(h, (-1, 6)), dense)
            loss = tf.reduce_sum(y**2)
        return tape.gradient(loss, [x, conv, strided, depthwise, dense])

    return step.get_concrete_function(tf.TensorSpec((2, 8, 8, 4))).graph


def test_kernel_ops_and_flops_match_closed_forms():
    ops = kernel_floor.collect_kernel_ops(_forward_backward_graph())
    flops = {}
    for (op_type, dtype, shapes, _), entry in ops.items():
        assert dtype == "float32"
        flops.setdefault(op_type, []).append((entry["count"], entry["flops"], shapes))
    conv = 2 * 2 * 8 * 8 * 3 * 3 * 4 * 6  # per multiply-add: 2 FLOPs
    strided = 2 * 2 * 4 * 4 * 3 * 3 * 6 * 6  # output 4x4
    depthwise = 2 * 2 * 4 * 4 * 5 * 5 * 6
    matmul = 2 * (2 * 4 * 4) * 6 * 5
    assert sorted(f for _, f, _ in flops["Conv2D"]) == sorted([conv, strided])
    # Both gradients of a convolution cost what its forward pass costs.
    assert sorted(f for _, f, _ in flops["Conv2DBackpropInput"]) == sorted([conv, strided])
    assert sorted(f for _, f, _ in flops["Conv2DBackpropFilter"]) == sorted([conv, strided])
    assert [f for _, f, _ in flops["DepthwiseConv2dNative"]] == [depthwise]
    assert [f for _, f, _ in flops["DepthwiseConv2dNativeBackpropInput"]] == [depthwise]
    assert [f for _, f, _ in flops["DepthwiseConv2dNativeBackpropFilter"]] == [depthwise]
    # Forward product plus the two gradient products, each the same size.
    assert sorted(f for _, f, _ in flops["MatMul"]) == [matmul] * 3
    assert all(count == 1 for rows in flops.values() for count, _, _ in rows)


def test_kernels_rebuilt_from_signatures_run_with_the_recorded_shapes():
    for sig, _ in kernel_floor.collect_kernel_ops(_forward_backward_graph()).items():
        op_type, _, shapes, _ = sig
        out = kernel_floor.tf_kernel(sig)()
        expected = json.loads(shapes)
        if op_type in ("Conv2D", "DepthwiseConv2dNative"):
            assert out.shape == tuple(expected["out"])
        elif op_type.endswith("BackpropInput"):
            assert out.shape == tuple(expected["data"])
        elif op_type.endswith("BackpropFilter"):
            assert out.shape == tuple(expected["filter"])
        torch_out = kernel_floor.torch_kernel(sig)()
        if op_type in ("Conv2D", "DepthwiseConv2dNative"):
            n, h, w, c = expected["out"]
            assert tuple(torch_out.shape) == (n, c, h, w)
        elif op_type == "MatMul":
            assert tuple(torch_out.shape) == out.shape
        else:
            (grad,) = [g for g in torch_out if g is not None]
            if op_type.endswith("BackpropFilter"):
                assert grad.numel() == np.prod(out.shape)
            elif expected["data"][1] % 2 == 0 and expected["out"][1] < expected["data"][1]:
                # stride 2 on an even size: TF pads one row/column more after,
                # so PyTorch's input (and its gradient) comes padded by one.
                n, h, w, c = expected["data"]
                assert tuple(grad.shape) == (n, c, h + 1, w + 1)
            else:
                n, h, w, c = expected["data"]
                assert tuple(grad.shape) == (n, c, h, w)
