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


def test_max_batch_search_finds_the_largest_fitting_size_with_few_probes():
    search = _load("max_batch").search
    for limit in (0, 1, 5, 37, 64, 100):
        probed = []

        def fits(b):
            probed.append(b)
            return b <= limit

        assert search(fits, start=8, maximum=100) == limit
        assert len(probed) == len(set(probed)) <= 12, probed
    assert search(lambda b: True, start=8, maximum=100) == 100


def _find_max_batch(tmp_path, *flags):
    import subprocess
    import sys

    out = tmp_path / "max_batch.json"
    cmd = [
        sys.executable, os.path.join(_BENCHMARKS, "train_throughput.py"), "--preset", "tiny",
        "--override", "num_latent_scales=1", "--override", "num_flows=0", "--xla", "off",
        "--override", "image_shape=[8,8,3]", "--override", "num_preprocess_cells=1",
        "--override", "num_postprocess_cells=1",
        "--tf_optimizer", "disable_meta_optimizer=true",
        "--find_max_batch", "--output_json", str(out), *flags,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    with open(out) as f:
        return proc, json.load(f)


def test_find_max_batch_trains_the_probe_within_the_budget(tmp_path):
    proc, report = _find_max_batch(
        tmp_path, "--batch_size", "2", "--max_batch_size", "2", "--memory_budget_gib", "16"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "max batch: 2" in proc.stdout
    [probe] = report["probes"]
    assert probe["fits"] and probe["status"] == "ok" and 0.3 < probe["peak_rss_gib"] < 16


def test_find_max_batch_kills_probes_over_the_budget(tmp_path):
    # Importing TensorFlow alone takes more than 0.3 GiB: every probe is killed.
    proc, report = _find_max_batch(
        tmp_path, "--batch_size", "2", "--max_batch_size", "4", "--memory_budget_gib", "0.3"
    )
    assert proc.returncode == 1 and "max batch: 0" in proc.stdout
    assert [p["batch_size"] for p in report["probes"]] == [2, 1]
    assert all(p["status"] == "over budget (killed)" and not p["fits"] for p in report["probes"])


def test_recomputed_groups_keep_less_for_the_backward_pass_than_recomputed_cells():
    from harness import lean_tiny

    breakdown = _load("memory_breakdown")
    spec = tf.TensorSpec((2, 8, 8, 3), tf.uint8)
    small = dict(image_shape=(8, 8, 3), num_preprocess_cells=1, num_postprocess_cells=1)
    kept = {
        policy: breakdown.trace_kept_activations(
            lean_tiny(num_flows=1, remat=policy, **small), spec
        )
        for policy in ("none", "cell", "group")
    }
    total = {policy: sum(k.values()) for policy, k in kept.items()}
    assert total["none"] > total["cell"] > total["group"] > 0, total
    # The largest saving of "group" over "cell" is in the samplers, flows and combiners; what
    # recomputed cells keep there is their inputs, which "group" does not keep either.
    sampler = lambda k: sum(v for (tower, _), v in k.items() if tower.startswith("samplers"))  # noqa: E731
    assert sampler(kept["group"]) < sampler(kept["cell"]) <= sampler(kept["none"])


def _breakdown_result(**measured):
    result = dict(
        preset="tiny", batch_size=8, overrides={}, runtime_gib=0.5, graph_and_executor_gib=1.0,
        graph_reference_batch_size=1, parameters_gib=0.25, optimizer_slots_gib=0.5,
        gradients_gib=0.25, kept_activations_gib=2.0, kept_by_region_gib={}, compile_s=1.0,
        step_s=[1.0], peak_rss_compile_gib=7.0, rss_at_rest_gib=6.0,
        allocator_peak_so_far_gib=4.0, allocator_step_peak_gib=3.75, peak_rss_step_gib=6.25,
    )
    result.update(measured)
    return result


def test_memory_breakdown_parts_are_the_measured_quantities(capsys):
    breakdown = _load("memory_breakdown")
    reference = _breakdown_result(batch_size=1, rss_at_rest_gib=3.0, allocator_peak_so_far_gib=1.25)
    assert breakdown.graph_and_executor_gib(reference) == 1.25  # 3.0 - 0.5 - 1.25
    result = _breakdown_result()
    breakdown.print_report(result)
    assert result["variables_gib"] == 0.75
    assert result["step_tensors_gib"] == 3.0  # the allocator's peak less the variables
    assert result["allocator_slack_gib"] == 0.5  # 6.0 at rest - 0.5 - 1.0 - 4.0
    assert result["sum_of_parts_gib"] == 5.75  # 0.5 + 1.0 + 3.75 + 0.5
    assert result["remainder_gib"] == 0.5
    assert "8.0 % of the peak" in capsys.readouterr().out


def test_memory_breakdown_of_a_small_model_adds_up(tmp_path):
    # 32 channels at batch 32: activations large enough for TF's pooled CPU allocator
    # (it does not see allocations under 256 KiB), variables too small for it.
    import subprocess
    import sys

    out = tmp_path / "breakdown.json"
    cmd = [
        sys.executable, os.path.join(_BENCHMARKS, "memory_breakdown.py"), "--preset", "tiny",
        "--batch_size", "32", "--steps", "1", "--override", "num_latent_scales=1",
        "--override", "num_flows=0", "--override", "num_channels_enc=32",
        "--override", "num_channels_dec=32", "--output_json", str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    # Its own reference: the graph state is what rest RSS holds beyond runtime and pool.
    assert abs(r["allocator_slack_gib"]) < 1e-9
    # The allocator saw the step's tensors: about the activations the traced graph keeps.
    assert 0.5 * r["kept_activations_gib"] < r["step_tensors_gib"] < 4 * r["kept_activations_gib"]
    assert r["allocator_step_peak_gib"] <= r["allocator_peak_so_far_gib"] * 1.5
    assert abs(r["remainder_gib"]) < 0.1 * r["peak_rss_step_gib"]
    assert "tensors in use at the step's peak" in proc.stdout
