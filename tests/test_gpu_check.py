"""`benchmarks/gpu_check.py` on the CPU in a tiny form: 2 logical devices stand in for 2 GPUs."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

_BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks")
_SCRIPT = os.path.join(_BENCHMARKS, "gpu_check.py")
# The tiny preset cut to two latent groups and no pre- or post-processing blocks; the spectral regulariser, SE blocks
# and Grappler off, and XLA's CPU backend without LLVM optimisation, keep the four compiles short.
_TINY = [
    "--preset", "tiny", "--batch_size", "2", "--warmup_steps", "1", "--steps", "1",
    "--override", "num_latent_scales=1", "--override", "num_flows=0",
    "--override", "image_shape=[8,8,3]", "--override", "num_preprocess_blocks=0",
    "--override", "num_postprocess_blocks=0", "--override", "num_preprocess_cells=1",
    "--override", "num_postprocess_cells=1", "--override", "use_se=false",
    "--override", "weight_decay_norm=0", "--override", "num_mixtures=1",
    "--tf_optimizer", "disable_meta_optimizer=true",
    "--env", "XLA_FLAGS=--xla_backend_optimization_level=0",
]


def _gpu_check(tmp_path, *flags):
    out = tmp_path / "gpu_check.json"
    cmd = [sys.executable, _SCRIPT, "--device", "cpu", "--output_json", str(out), *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    report = json.loads(out.read_text()) if out.exists() else None
    return proc, report


def _load_distributed():
    spec = importlib.util.spec_from_file_location(
        "distributed", os.path.join(_BENCHMARKS, "distributed.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # ~80 s: four training subprocesses, two of them XLA-compiled
def test_gpu_check_reports_every_variant_on_two_logical_cpus(tmp_path):
    proc, report = _gpu_check(tmp_path, *_TINY, "--logical_cpus", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = {r["check_variant"]: r for r in report["results"]}
    assert list(results) == ["xla_bf16", "xla_bf16_remat", "mirrored_bf16", "mirrored_xla_bf16"]
    for name, r in results.items():
        assert f"variant {name}: " in proc.stdout
        assert "(CPU: the process's peak RSS)" in proc.stdout
        assert 0.2 < r["peak_rss_gib"] < 6, r["peak_rss_gib"]
    for name in ("xla_bf16", "xla_bf16_remat", "mirrored_bf16"):
        r = results[name]
        assert r["status"] == "ok" and math.isfinite(r["images_per_s"]) and r["images_per_s"] > 0
        # images/s counts the global batch: global batch / median step time.
        assert r["images_per_s"] == pytest.approx(r["global_batch_size"] / r["median_s_per_step"])
    assert [results["xla_bf16"]["xla"], results["mirrored_bf16"]["xla"]] == [True, False]
    assert results["xla_bf16_remat"]["final_logs"]["loss"] > 0
    mirrored = results["mirrored_bf16"]
    assert mirrored["replicas"] == 2 and mirrored["global_batch_size"] == 2 * 2
    assert results["xla_bf16"]["replicas"] == 1 and results["xla_bf16"]["global_batch_size"] == 2
    xla_mirrored = results["mirrored_xla_bf16"]
    assert xla_mirrored["replicas"] == 2
    if xla_mirrored["status"] != "ok":
        # Keras 3 compiles all replicas as one XLA computation: CPU:1's variables seen from CPU:0.
        assert xla_mirrored["status"].startswith("refused: ") and "\n" not in xla_mirrored["status"]
        assert "Trying to access resource" in xla_mirrored["status"]
    else:
        assert xla_mirrored["images_per_s"] > 0
    assert proc.stdout.rstrip().splitlines()[-1].startswith("gpu_check: OK")


def test_gpu_check_names_the_failing_variant_and_exits_non_zero(tmp_path):
    proc, report = _gpu_check(tmp_path, "--preset", "no_such_preset", "--variants", "xla_bf16")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    [failed] = [line for line in proc.stdout.splitlines() if line.startswith("FAILED ")]
    assert failed.startswith("FAILED xla_bf16: ") and "no_such_preset" in failed
    assert report["results"][0]["status"] != "ok"
    assert "gpu_check: FAILED (1 of 1 variants)" in proc.stdout


def test_gpu_check_sh_without_a_gpu_stops_with_a_one_line_reason():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="-1", GPU_CHECK_DEVICE="gpu", PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", os.path.join(_BENCHMARKS, "gpu_check.sh")],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 2
    assert proc.stdout.rstrip().splitlines()[-1].startswith("gpu_check: no GPU visible")


def test_gpu_check_rejects_unknown_variants_and_variant_flags_before_training():
    for flags, message in (
        (["--variants", "xla_bf16,nope"], "unknown ['nope']"),
        (["--xla", "off"], "--xla: set by each variant"),
    ):
        proc = subprocess.run(
            [sys.executable, _SCRIPT, "--device", "cpu", *flags],
            capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]


def test_refusal_is_the_error_type_and_first_line_after_the_graph_traceback():
    refusal = _load_distributed().refusal
    error = (
        "InvalidArgumentError: Graph execution error:\n\n"
        "Detected at node StatefulPartitionedCall defined at (most recent call last):\n"
        '  File "train_throughput.py", line 1, in <module>\n\n'
        "Trying to access resource moving_mean/replica_1/91 located in device CPU:1 from CPU:0\n"
        " Cf. https://www.tensorflow.org/xla/known_issues\n"
    )
    assert refusal(error) == (
        "refused: InvalidArgumentError: Trying to access resource moving_mean/replica_1/91 "
        "located in device CPU:1 from CPU:0"
    )
    assert refusal("UnimplementedError: cannot lift\nmore") == "refused: UnimplementedError: cannot lift"
    assert refusal("") == "refused: error without a message"


def test_gpu_check_fails_a_variant_left_without_time(tmp_path):
    proc, report = _gpu_check(tmp_path, "--time_budget_s", "0", "--variants", "mirrored_bf16")
    assert proc.returncode == 1
    assert "FAILED mirrored_bf16: not run: the --time_budget_s of 0 s is spent" in proc.stdout
    assert report["results"][0]["status"].startswith("not run")
