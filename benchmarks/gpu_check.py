"""Check that NVAE trains on this machine's GPUs, with the settings to use there.

Trains the cifar10 preset at batch 32 per device with the bfloat16 mixed-precision
policy in four settings, each in its own subprocess (`train_throughput.py`'s worker):

* `xla_bf16`: one GPU, `jit_compile=True`;
* `xla_bf16_remat`: the same with `remat=true` (less memory, more compute);
* `mirrored_bf16`: `MirroredStrategy` over all GPUs, without XLA (the supported
  multi-GPU setting);
* `mirrored_xla_bf16`: `MirroredStrategy` with XLA, which Keras 3 compiles as one
  computation over all replicas; reported with its figures or as `refused: <reason>`,
  and never failing the check by itself.

For each it prints images/s, the peak memory of each GPU (on `--device cpu`: the
process's peak RSS) and the status. Any failure of the first three makes the exit code
non-zero after naming the variant and its reason. Each variant has a time limit, and the
whole check one (`--time_budget_s`, 7.5 minutes). With no GPU visible it stops with a
one-line reason unless `--device cpu` (or `GPU_CHECK_DEVICE=cpu`) is given. Flags it does
not know go to `train_throughput.py` (e.g. `--env KEY=VALUE`, `--tf_optimizer KEY=VALUE`).

Examples:

    benchmarks/gpu_check.sh
    python benchmarks/gpu_check.py --timeout_s 300 --time_budget_s 900 --output_json gpu_check.json
    python benchmarks/gpu_check.py --device cpu --preset tiny --batch_size 2 \
        --warmup_steps 1 --steps 1 --logical_cpus 2
"""

import argparse
import json
import math
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)

import train_throughput  # noqa: E402

# name: (--xla, --distribute, extra overrides, required for the check to pass)
VARIANTS = {
    "xla_bf16": ("on", "none", [], True),
    "xla_bf16_remat": ("on", "none", ["remat=true"], True),
    "mirrored_bf16": ("off", "mirrored", [], True),
    "mirrored_xla_bf16": ("on", "mirrored", [], False),
}

# train_throughput.py flags that the variants set themselves.
_SET_PER_VARIANT = (
    "--xla", "--distribute", "--mixed_precision", "--output_json", "--find_max_batch",
)


def build_parser():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument(
        "--device",
        choices=("gpu", "cpu"),
        default=os.environ.get("GPU_CHECK_DEVICE", "gpu"),
        help="gpu: fail unless TensorFlow sees a GPU; cpu: run on the CPU with GPUs hidden "
        "(default from GPU_CHECK_DEVICE)",
    )
    p.add_argument("--preset", default="cifar10", help="NVAE preset name")
    p.add_argument("--batch_size", type=int, default=32, help="images per step and device")
    p.add_argument("--warmup_steps", type=int, default=2, help="untimed steps, compile included")
    p.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    p.add_argument("--timeout_s", type=float, default=180.0, help="time limit of each variant")
    budget_help = "time limit of the whole check: a variant gets at most what is left of it"
    p.add_argument("--time_budget_s", type=float, default=450.0, help=budget_help)
    p.add_argument(
        "--logical_cpus",
        type=int,
        default=0,
        help="split the CPU into N logical devices for the Mirrored variants (--device cpu)",
    )
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="NVAEConfig override for every variant (repeatable)",
    )
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma-separated subset of " + ", ".join(VARIANTS),
    )
    p.add_argument("--output_json", default=None, help="also write the results here")
    return p


def _list_devices(device):
    """Print the devices TensorFlow sees; returns the GPU names."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    print(f"tensorflow {tf.__version__} (built with CUDA: {tf.test.is_built_with_cuda()})")
    for gpu in gpus:
        details = tf.config.experimental.get_device_details(gpu)
        print(f"found {gpu.name}: {details.get('device_name', 'unknown model')}")
    print(f"found {len(tf.config.list_physical_devices('CPU'))} CPU device(s), {os.cpu_count()} cores")
    if device == "cpu" and gpus:
        print("--device cpu: GPUs hidden from the variants (CUDA_VISIBLE_DEVICES=-1)")
    return [gpu.name for gpu in gpus]


def _variant_argv(args, name, timeout_s):
    xla, distribute, overrides, _ = VARIANTS[name]
    argv = ["--preset", args.preset, "--batch_size", str(args.batch_size)]
    argv += ["--warmup_steps", str(args.warmup_steps), "--steps", str(args.steps)]
    argv += ["--xla", xla, "--distribute", distribute, "--mixed_precision", "mixed_bfloat16"]
    argv += ["--logical_cpus", str(args.logical_cpus), "--timeout_s", str(timeout_s)]
    for item in args.override + overrides:
        argv += ["--override", item]
    if args.device == "cpu":
        argv += ["--env", "CUDA_VISIBLE_DEVICES=-1"]
    return argv + args.passthrough


def run_check_variant(args, name, timeout_s):
    """Train one variant through `train_throughput.run_variant`; returns its result dict."""
    if timeout_s < 1:
        result = {"status": f"not run: the --time_budget_s of {args.time_budget_s:g} s is spent"}
    else:
        argv = _variant_argv(args, name, timeout_s)
        worker_args = train_throughput.build_parser().parse_args(argv)
        result = train_throughput.run_variant(worker_args, VARIANTS[name][0], argv)
    result["check_variant"] = name
    result["required"] = VARIANTS[name][3]
    return result


def failure_reason(result):
    """None if the variant trained with finite positive images/s, else a one-line reason."""
    ips = result.get("images_per_s")
    if result.get("status") == "ok" and ips is not None and math.isfinite(ips) and ips > 0:
        return None
    status = result.get("status", "no result")
    if status.startswith("refused:"):
        return status
    error = (result.get("error") or "").strip().splitlines()
    return f"{status}: {error[0]}" if error else status


def _memory(result):
    peaks = result.get("gpu_peaks_gib")
    if peaks:
        return "peak GPU memory " + ", ".join(
            f"GPU:{i} {peak:.2f} GiB" for i, peak in enumerate(peaks)
        )
    rss = result.get("peak_rss_gib")
    rss_text = "-" if rss is None else f"{rss:.2f} GiB"
    return f"peak memory {rss_text} (CPU: the process's peak RSS)"


def variant_line(result):
    """One printed line per variant: replicas, batch, images/s, compile, memory, status."""
    ips, compile_s = result.get("images_per_s"), result.get("compile_s")
    return (
        f"variant {result['check_variant']}: replicas={result.get('replicas', '-')} "
        f"global_batch={result.get('global_batch_size', '-')} "
        f"images/s={'-' if ips is None else format(ips, '.2f')} "
        f"compile_s={'-' if compile_s is None else format(compile_s, '.1f')} "
        f"{_memory(result)}; status={result.get('status', '?')}"
    )


def _selected(parser, args):
    names = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or not names:
        parser.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    reserved = [flag for flag in args.passthrough if flag.split("=")[0] in _SET_PER_VARIANT]
    if reserved:
        parser.error(f"{', '.join(reserved)}: set by each variant, not a flag of the check")
    from keras_nvae.config import parse_overrides

    try:
        parse_overrides(args.override)
    except ValueError as error:
        parser.error(str(error))
    try:
        train_throughput.build_parser().parse_args(_variant_argv(args, names[0], 1))
    except SystemExit:
        parser.error(f"train_throughput.py does not accept {' '.join(args.passthrough)}")
    return names


def main(argv=None):
    parser = build_parser()
    args, args.passthrough = parser.parse_known_args(argv)
    names = _selected(parser, args)
    t0 = time.perf_counter()
    gpus = _list_devices(args.device)
    if args.device == "gpu" and not gpus:
        print(
            "gpu_check: no GPU visible to TensorFlow (check the driver, CUDA_VISIBLE_DEVICES "
            "and a CUDA build of tensorflow); run with --device cpu to check the CPU path"
        )
        return 2
    results = []
    for name in names:
        left = args.time_budget_s - (time.perf_counter() - t0)
        results.append(run_check_variant(args, name, min(args.timeout_s, left)))
        print(variant_line(results[-1]), flush=True)
    failures = [(r["check_variant"], failure_reason(r)) for r in results if r["required"]]
    failures = [(name, reason) for name, reason in failures if reason]
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump({"device": args.device, "gpus": gpus, "results": results}, f, indent=2)
    print("\nsummary:")
    for r in results:
        print("  " + variant_line(r))
    for name, reason in failures:
        print(f"FAILED {name}: {reason}")
    wall = time.perf_counter() - t0
    verdict = f"FAILED ({len(failures)} of {len(names)} variants)" if failures else "OK"
    print(f"gpu_check: {verdict} in {wall:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
