"""Training-throughput and peak-memory benchmark for `keras_nvae.NVAE` presets.

Measures, for one preset and batch size, with and/or without XLA:

* compile time: wall time of the first call of the compiled Keras train
  function (graph tracing + TF graph optimisation / XLA compilation + the first
  step itself);
* throughput: images/s from the MEDIAN wall time of the timed train steps that
  follow the warm-up steps;
* peak memory: peak RSS of the process (VmHWM, also after a reset following
  warm-up, i.e. the steady-state peak), and on GPU the allocator peak of
  `tf.config.experimental.get_memory_info("GPU:0")`.

Every variant runs in its own subprocess (so peak RSS is per variant and no XLA
or graph state leaks between variants); the parent collects the results,
prints a table and writes a JSON file.

Examples:

    python benchmarks/train_throughput.py --preset mnist --batch_size 32 --xla off
    python benchmarks/train_throughput.py --preset cifar10 --batch_size 8 --xla both \
        --baseline_s_per_step 9.9 --baseline_rss_gib 12.6
    python benchmarks/train_throughput.py --preset tiny --batch_size 4 --steps 3 \
        --override num_channels_enc=16 --override num_channels_dec=16 --breakdown

See benchmarks/README.md for how to read the output.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import distributed

_HERE = os.path.dirname(os.path.abspath(__file__))
_GIB = 1024.0**3


# ----------------------------------------------------------------- arguments
def _parse_tf_option(text):
    """A --tf_optimizer `KEY=VALUE` item: (option name, JSON value)."""
    key, separator, value = text.partition("=")
    if separator:
        try:
            return key.strip(), json.loads(value)
        except json.JSONDecodeError:
            pass
    raise argparse.ArgumentTypeError(
        f"--tf_optimizer expects key=value with a JSON value (e.g. remapping=false), got {text!r}"
    )


def build_parser():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--preset", default="mnist", help="NVAE preset name")
    p.add_argument("--batch_size", type=int, default=32, help="images per train step")
    p.add_argument(
        "--warmup_steps",
        type=int,
        default=2,
        help="untimed steps; the first one is the compile call (timed separately)",
    )
    p.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="NVAEConfig field, value parsed as JSON as keras_nvae.config.parse_overrides "
        "does (repeatable)",
    )
    p.add_argument(
        "--xla",
        choices=("off", "on", "both"),
        default="both",
        help="model.compile(jit_compile=...); each variant in its own subprocess",
    )
    p.add_argument(
        "--mixed_precision",
        choices=("none", "mixed_float16", "mixed_bfloat16"),
        default="none",
        help="Keras global dtype policy",
    )
    distributed.add_flags(p)
    p.add_argument(
        "--output_json",
        default=None,
        help="default: benchmarks/results/<preset>_b<batch>.json",
    )
    p.add_argument(
        "--total_steps",
        type=int,
        default=100_000,
        help="total_steps passed to model.compile (schedules only, no effect on cost)",
    )
    p.add_argument(
        "--timeout_s",
        type=float,
        default=None,
        help="kill a variant's subprocess after this many seconds (recorded as timeout)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="TF intra- and inter-op threads (0: TF default)",
    )
    p.add_argument(
        "--inter_op_threads",
        type=int,
        default=0,
        help="TF inter-op threads, overriding --threads (1 runs one op at a time: "
        "fewer tensors alive at once)",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment variable for the variant subprocesses, e.g. "
        "TF_ENABLE_ONEDNN_OPTS=0 (repeatable)",
    )
    p.add_argument(
        "--tf_optimizer",
        action="append",
        default=[],
        type=_parse_tf_option,
        metavar="KEY=VALUE",
        help="tf.config.optimizer.set_experimental_options entry, e.g. "
        "disable_meta_optimizer=true or remapping=false (repeatable)",
    )
    p.add_argument(
        "--breakdown",
        action="store_true",
        help="after the train-step timing, also time forward / objective / "
        "regulariser / forward+backward / optimizer.apply as separate tf.functions",
    )
    p.add_argument("--breakdown_steps", type=int, default=3, help="timed calls per piece")
    p.add_argument(
        "--profile",
        action="store_true",
        help="after the timed steps, trace --profile_steps train steps with the TF "
        "profiler and print where op time goes (by op type and by phase)",
    )
    p.add_argument("--profile_steps", type=int, default=1, help="traced train steps")
    p.add_argument(
        "--profile_dir",
        default=None,
        help="keep the TF profiler trace here (TensorBoard's profile plugin reads "
        "it); default: a temporary directory, deleted",
    )
    p.add_argument(
        "--baseline_s_per_step",
        type=float,
        default=None,
        help="external baseline (e.g. official PyTorch) s/step at the same batch size",
    )
    p.add_argument(
        "--baseline_rss_gib",
        type=float,
        default=None,
        help="external baseline peak RSS in GiB",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for weights and images")
    p.add_argument(
        "--find_max_batch",
        action="store_true",
        help="instead of timing --batch_size, search for the largest batch that trains "
        "within --memory_budget_gib (one subprocess per probe; see max_batch.py)",
    )
    p.add_argument(
        "--memory_budget_gib",
        type=float,
        default=None,
        help="peak RSS budget for --find_max_batch; a probe above it is killed",
    )
    p.add_argument(
        "--max_batch_size",
        type=int,
        default=1024,
        help="largest batch --find_max_batch probes (it starts at --batch_size)",
    )
    # Internal: run one variant in this process.
    p.add_argument("--_worker_xla", choices=("off", "on"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--_worker_out", default=None, help=argparse.SUPPRESS)
    return p


# -------------------------------------------------------------------- memory
def _proc_status_kib(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_bytes():
    """Peak resident set size of this process (VmHWM, else ru_maxrss)."""
    hwm = _proc_status_kib("VmHWM")
    if hwm is not None:
        return hwm * 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024


def current_rss_bytes():
    rss = _proc_status_kib("VmRSS")
    return None if rss is None else rss * 1024


def malloc_trim():
    """Return freed heap memory to the OS (glibc); False if unavailable."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def reset_peak_rss():
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _gib(n):
    return None if n is None else n / _GIB


def _loadavg():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def _source_hash(package_dir):
    """sha256 over the package's .py files, to tell which library state was measured."""
    import hashlib

    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(package_dir)):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                h.update(os.path.relpath(path, package_dir).encode())
                with open(path, "rb") as f:
                    h.update(f.read())
    return h.hexdigest()[:16]


# -------------------------------------------------------------------- worker
def _log(result, msg):
    print(f"[{result['variant']}] {msg}", file=sys.stderr, flush=True)


def _save(result, path):
    with open(path, "w") as f:
        json.dump(result, f, indent=2)


def _import_tf(args, result):
    """Import and configure TF, Keras and keras_nvae; returns (np, tf, keras_nvae)."""
    t_start = time.perf_counter()
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    import numpy as np
    import tensorflow as tf

    distributed.split_cpu(tf, args.logical_cpus)
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    if args.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
    if args.tf_optimizer:
        tf.config.optimizer.set_experimental_options(dict(args.tf_optimizer))
        result["tf_optimizer_options"] = tf.config.optimizer.get_experimental_options()
    import keras

    import keras_nvae

    if args.mixed_precision != "none":
        keras.mixed_precision.set_global_policy(args.mixed_precision)
    keras.utils.set_random_seed(args.seed)
    result["rss_after_import_gib"] = _gib(current_rss_bytes())
    result["keras_nvae_source_sha256"] = _source_hash(os.path.dirname(keras_nvae.__file__))
    result["import_s"] = time.perf_counter() - t_start
    return np, tf, keras_nvae


def _build_model(args, result, strategy, keras_nvae):
    """The preset's model, built and compiled under `strategy`, with its train function."""
    overrides = keras_nvae.config.parse_overrides(args.override)
    t0 = time.perf_counter()
    with strategy.scope():
        model = keras_nvae.NVAE.from_preset(args.preset, **overrides)
        result["build_s"] = time.perf_counter() - t0
        model.compile(total_steps=args.total_steps, jit_compile=result["xla"])
        if args.distribute != "none":
            # As `fit` does under a strategy: optimizer variables exist before the first step.
            model.optimizer.build(model.trainable_variables)
    model.make_train_function()
    result["num_params"] = int(model.count_params())
    result["rss_after_build_gib"] = _gib(current_rss_bytes())
    c = model.config
    _log(
        result,
        f"built {args.preset} ({result['num_params']:,} params) in "
        f"{result['build_s']:.1f}s; image_shape={tuple(c.image_shape)} "
        f"likelihood={c.likelihood}; {result['replicas']} replica(s), "
        f"global batch {result['global_batch_size']}",
    )
    return model


def _synthetic_images(np, config, batch_size, seed):
    """Random uint8 images of the config's shape; binary 0/255 for Bernoulli likelihoods."""
    rng = np.random.default_rng(seed)
    shape = (batch_size,) + tuple(config.image_shape)
    if config.likelihood == "bernoulli":
        return (rng.random(shape) < 0.5).astype(np.uint8) * 255
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def _after_warmup(result, tf, gpus):
    """Steady-state peaks: reset once the heap memory freed by compilation is handed back."""
    result["peak_rss_warmup_gib"] = _gib(peak_rss_bytes())
    result["rss_before_trim_gib"] = _gib(current_rss_bytes())
    malloc_trim()
    result["rss_after_trim_gib"] = _gib(current_rss_bytes())
    result["peak_rss_reset_ok"] = reset_peak_rss()
    if gpus:
        distributed.reset_gpu_peaks(tf, gpus)


def _run_steps(args, result, step, tf, gpus):
    """Warm-up then timed steps; fills the step times (partial ones if a step fails)."""
    warmup = max(int(args.warmup_steps), 1)
    step_times, warmup_times, step_cpu = [], [], []
    result["final_logs"] = None
    result["loadavg_start"] = _loadavg()
    try:
        for i in range(warmup + int(args.steps)):
            t0, c0 = time.perf_counter(), time.process_time()
            logs = step()
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            result["final_logs"] = logs
            if i == 0:
                result["compile_cpu_s"], result["compile_s"] = dc, dt
                result["peak_rss_compile_gib"] = _gib(peak_rss_bytes())
                result["gpu_peaks_compile_gib"] = distributed.gpu_peaks_gib(tf, gpus)
            if i < warmup:
                warmup_times.append(dt)
                kind = "compile call" if i == 0 else "warm-up"
                _log(result, f"{kind} step {i + 1}: {dt:.3f}s loss={logs.get('loss'):.4g}")
                if i == warmup - 1:
                    _after_warmup(result, tf, gpus)
            else:
                step_times.append(dt)
                step_cpu.append(dc)
                _log(
                    result,
                    f"timed step {i + 1 - warmup}: {dt:.3f}s (cpu {dc:.2f}s) "
                    f"loss={logs.get('loss'):.4g}",
                )
    except Exception as e:  # keep partial results
        result["error"] = f"{type(e).__name__}: {e}"
        _log(result, result["error"])
    result["loadavg_end"] = _loadavg()
    result.update(warmup_step_s=warmup_times, step_s=step_times, step_cpu_s=step_cpu)


def _summarise(result, tf, gpus):
    """Step-time statistics, images/s over the global batch, and the run's memory peaks."""
    step_times = result["step_s"]
    if step_times:
        median = statistics.median(step_times)
        result.update(
            status="ok" if "error" not in result else "partial",
            median_s_per_step=median,
            mean_s_per_step=statistics.fmean(step_times),
            min_s_per_step=min(step_times),
            max_s_per_step=max(step_times),
            images_per_s=result["global_batch_size"] / median,
            median_cpu_s_per_step=statistics.median(result["step_cpu_s"]),
            compile_overhead_s=result.get("compile_s", median) - median,
        )
    elif "error" in result and result["xla"] and result["replicas"] > 1:
        result["status"] = distributed.refusal(result["error"])
    # The process-wide peak is max(peak up to the reset, peak since the reset).
    result["peak_rss_steady_gib"] = _gib(peak_rss_bytes())
    result["peak_rss_gib"] = max(
        result.get("peak_rss_compile_gib") or 0.0,
        result.get("peak_rss_warmup_gib") or 0.0,
        result["peak_rss_steady_gib"],
    )
    if not result.get("peak_rss_reset_ok", False):
        result["peak_rss_steady_gib"] = None  # reset unsupported: same as overall
    if gpus:
        steady = distributed.gpu_peaks_gib(tf, gpus)
        compile_ = result.get("gpu_peaks_compile_gib") or [0.0] * len(gpus)
        result["gpu_peaks_steady_gib"] = steady
        result["gpu_peaks_gib"] = [max(a, b) for a, b in zip(compile_, steady)]
        result["gpu_peak_steady_gib"] = max(steady)
        result["gpu_peak_gib"] = max(result["gpu_peaks_gib"])
    result["device"] = ", ".join(gpus) if gpus else "CPU"


def _extras(args, result, model, images, step):
    """The optional --profile and --breakdown runs after the timed steps."""
    if not result["step_s"]:
        return
    if args.profile:
        try:
            result["profile"] = run_profile(step, args, lambda msg: _log(result, msg))
        except Exception as e:
            result["profile_error"] = f"{type(e).__name__}: {e}"
            _log(result, result["profile_error"])
        _save(result, args._worker_out)
    if args.breakdown:
        try:
            log = lambda msg: _log(result, msg)  # noqa: E731
            result["breakdown"] = run_breakdown(model, images, result["xla"], args, log)
        except Exception as e:
            result["breakdown_error"] = f"{type(e).__name__}: {e}"
            _log(result, result["breakdown_error"])
        _save(result, args._worker_out)


def run_worker(args):
    """Benchmark one variant in this process; writes a JSON dict to args._worker_out."""
    t_start = time.perf_counter()
    result = {
        "variant": distributed.variant_name(args.distribute, args._worker_xla),
        "xla": args._worker_xla == "on",
        "distribute": args.distribute,
        "status": "error",
    }
    np, tf, keras_nvae = _import_tf(args, result)
    strategy = distributed.make_strategy(tf, args.distribute, args.logical_cpus)
    result["replicas"] = strategy.num_replicas_in_sync
    result["global_batch_size"] = args.batch_size * result["replicas"]
    gpus = distributed.gpu_names(tf)
    model = _build_model(args, result, strategy, keras_nvae)
    images = _synthetic_images(np, model.config, result["global_batch_size"], args.seed)
    iterator = iter(distributed.image_dataset(tf, strategy, images))
    train_function = model.train_function

    def step():
        # Materialise: pull every returned value back to the host.
        return {k: float(np.asarray(v)) for k, v in train_function(iterator).items()}

    _run_steps(args, result, step, tf, gpus)
    _summarise(result, tf, gpus)
    _save(result, args._worker_out)
    _extras(args, result, model, images, step)
    result["worker_wall_s"] = time.perf_counter() - t_start
    _save(result, args._worker_out)


# Phases of a train step, by op name (first match wins).
_PHASES = (
    ("spectral regulariser (fwd + bwd)", ("spectral_regularizer",)),
    ("optimizer update", ("adamax", "nvae_adamax", "optimizer", "assignaddvariableop", "assignsubvariableop")),
    ("backward", ("gradient_tape/", "gradients/")),
)


def _phase(op_name):
    lower = op_name.lower()
    for phase, keys in _PHASES:
        if any(k in lower for k in keys):
            return phase
    parts = [p for p in op_name.split("/") if not p.startswith("StatefulPartitionedCall")]
    if len(parts) <= 1:
        # Ops outside any layer scope: mostly the backward of tf.nn.silu (its
        # custom gradient is built at the root scope), plus the kernels'
        # weight-norm/transposes gathered for the spectral regulariser and the
        # KL balancing / loss arithmetic.
        return "root-level ops (silu backward, regulariser inputs, loss)"
    return "forward (+ metrics, BN stats)"


_GROUPS = (
    "stem", "pre_process", "enc_tower", "enc0", "enc_sampler", "dec_sampler",
    "nf_cells", "dec_tower", "post_process", "image_conditional",
    "spectral_regularizer",
)
_SUBLAYERS = (
    "conv_expand", "conv_depthwise", "conv_project", "bn_in", "bn_expand",
    "bn_depthwise", "bn_out", "bn", "conv", "se", "skip", "combiner_conv",
) + _GROUPS


def _strip_index(part):
    import re

    return re.sub(r"(_\d+)+$", "", part)


def _layer_group(op_name):
    for part in op_name.split("/"):
        base = _strip_index(part)
        if base in _GROUPS:
            return base
    return "other (objective, likelihood, optimizer, metrics)"


def _sublayer(op_name):
    for part in reversed(op_name.split("/")[:-1]):
        base = _strip_index(part)
        if base in _SUBLAYERS:
            return base
    return "other"


def run_profile(step, args, log):
    """Trace train steps with the TF profiler; aggregate kernel time.

    Sums the durations of the TF op events ("name:Type") of all threads, so the
    totals are CPU/kernel time over all threads, not wall time. Phases are told
    apart by op name: ops under `gradient_tape/` are the backward pass, ops of
    the spectral regulariser and the optimizer are counted apart.
    """
    import collections
    import glob
    import shutil

    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    logdir = args.profile_dir or tempfile.mkdtemp(prefix="nvae_profile_")
    n = max(int(args.profile_steps), 1)
    tf.profiler.experimental.start(logdir)
    t0 = time.perf_counter()
    try:
        for _ in range(n):
            step()
    finally:
        tf.profiler.experimental.stop()
    wall = (time.perf_counter() - t0) / n
    paths = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))
    space = xplane_pb2.XSpace()
    with open(paths[-1], "rb") as f:
        space.ParseFromString(f.read())
    by_type, by_phase, by_type_phase = (collections.Counter() for _ in range(3))
    by_layer, by_sublayer = collections.Counter(), collections.Counter()
    count = collections.Counter()
    for plane in space.planes:
        metadata = plane.event_metadata
        for line in plane.lines:
            for event in line.events:
                name = metadata[event.metadata_id].name
                if ":" not in name or "::" in name:
                    continue
                op_name, op_type = name.rsplit(":", 1)
                if op_type.startswith("__inference") or "__inference" in op_type:
                    continue  # a function-call event enclosing the op events
                seconds = event.duration_ps * 1e-12 / n
                phase = _phase(op_name)
                by_type[op_type] += seconds
                by_phase[phase] += seconds
                by_type_phase[f"{op_type} [{phase}]"] += seconds
                count[op_type] += 1
                by_layer[_layer_group(op_name)] += seconds
                by_sublayer[_sublayer(op_name)] += seconds
    total = sum(by_type.values())
    if args.profile_dir is None:
        shutil.rmtree(logdir, ignore_errors=True)

    def top(counter, k=None):
        return [[name, s, s / total if total else 0.0] for name, s in counter.most_common(k)]

    out = {
        "profiled_steps": n,
        "wall_s_per_step_profiled": wall,
        "op_time_s_per_step": total,
        "by_phase": top(by_phase),
        "by_op_type": top(by_type, 25),
        "by_op_type_and_phase": top(by_type_phase, 25),
        "by_layer_group": top(by_layer, 15),
        "by_sublayer": top(by_sublayer, 20),
        "op_events_per_step": {k: v // n for k, v in count.most_common(15)},
        "trace_dir": args.profile_dir,
    }
    log(f"profile: {total:.2f}s op time per step (wall {wall:.2f}s)")
    return out


def run_breakdown(model, images, xla, args, log):
    """Median wall time of the pieces of a train step, each its own tf.function.

    Each function runs once untimed (tracing/compile) then `breakdown_steps`
    timed calls. These run *after* the train-step benchmark, so BN statistics
    and spectral power-iteration state keep being updated (costs included).
    """
    import numpy as np
    import tensorflow as tf

    x = tf.constant(images)
    variables = model.trainable_variables
    optimizer = model.optimizer

    def fn(f):
        # autograph=False as Keras' own train function (do_not_convert): the
        # library is written for direct tracing.
        return tf.function(f, jit_compile=xla, reduce_retracing=True, autograph=False)

    @fn
    def forward():
        out = model(x, training=True)
        return tf.reduce_mean(out["recon_nll"]) + tf.reduce_sum(out["kl"])

    @fn
    def objective():
        return model.compute_objective(x, training=True)["loss"]

    @fn
    def regularizer():
        spectral, bn = model.regularization_terms(training=True)
        return spectral + bn

    @fn
    def regularizer_grad():
        with tf.GradientTape() as tape:
            spectral, bn = model.regularization_terms(training=True)
            loss = spectral + bn
        grads = tape.gradient(loss, variables)
        return tf.add_n([tf.reduce_sum(g) for g in grads if g is not None])

    @fn
    def forward_backward():
        with tf.GradientTape() as tape:
            loss = model.compute_objective(x, training=True)["loss"]
        grads = tape.gradient(loss, variables)
        return grads

    t0 = time.perf_counter()
    grads = forward_backward()
    _materialise(grads, np)
    first_forward_backward = time.perf_counter() - t0
    grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]

    @fn
    def optimizer_apply(grads):
        optimizer.apply(grads, variables)
        return tf.constant(0.0)

    pieces = [
        ("forward (model(x, training=True))", forward, ()),
        ("objective (forward + KL + regularisers)", objective, ()),
        ("regularisers only (spectral + BN)", regularizer, ()),
        ("regularisers forward+backward", regularizer_grad, ()),
        ("forward+backward (tape.gradient of objective)", forward_backward, ()),
        ("optimizer.apply", optimizer_apply, (grads,)),
    ]
    out = {}
    for name, f, fargs in pieces:
        t0 = time.perf_counter()
        _materialise(f(*fargs), np)
        first = time.perf_counter() - t0
        times = []
        for _ in range(max(int(args.breakdown_steps), 1)):
            t0 = time.perf_counter()
            _materialise(f(*fargs), np)
            times.append(time.perf_counter() - t0)
        if f is forward_backward:
            first = first_forward_backward  # traced by the call that made `grads`
        out[name] = {"first_call_s": first, "median_s": statistics.median(times), "s": times}
        log(f"breakdown {name}: first {first:.3f}s, median {out[name]['median_s']:.3f}s")
    return out


def _materialise(value, np):
    if isinstance(value, (list, tuple)):
        for v in value:
            _materialise(v, np)
    elif isinstance(value, dict):
        for v in value.values():
            _materialise(v, np)
    elif value is not None:
        np.asarray(value)


# -------------------------------------------------------------------- parent
def _worker_command(argv, xla):
    """The worker's command line: `argv` without its `--xla`, plus the worker's own."""
    cleaned, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--xla":
            skip = True
            continue
        if a.startswith("--xla="):
            continue
        cleaned.append(a)
    return [sys.executable, os.path.abspath(__file__)] + cleaned + ["--_worker_xla", xla]


def run_variant(args, xla, argv=None):
    """Run one variant in a subprocess and return its result dict.

    Args:
        args: the parsed flags (`--timeout_s`, `--env`, `--distribute` are read here).
        xla: `"off"` or `"on"`.
        argv: the flags the worker gets (default: this process's `sys.argv[1:]`).

    Returns:
        The worker's JSON dict plus `subprocess_rc`, `subprocess_wall_s` and a
        `status` of `timeout` / `failed (rc=N)` when the worker did not finish.
    """
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out_path = f.name
    argv = sys.argv[1:] if argv is None else list(argv)
    cmd = _worker_command(argv, xla) + ["--_worker_out", out_path]
    name = distributed.variant_name(args.distribute, xla)
    print(f"== running variant {name} in a subprocess", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    timed_out = False
    env = dict(os.environ)
    env.update(dict(e.split("=", 1) for e in args.env))
    proc = subprocess.Popen(cmd, env=env)
    try:
        rc = proc.wait(timeout=args.timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
        timed_out = True
    wall = time.perf_counter() - t0
    result = {"variant": name, "xla": xla == "on", "distribute": args.distribute}
    try:
        with open(out_path) as f:
            result.update(json.load(f))
    except (OSError, json.JSONDecodeError):
        pass
    finally:
        try:
            os.unlink(out_path)
        except OSError:
            pass
    result["subprocess_rc"] = rc
    result["subprocess_wall_s"] = wall
    if timed_out:
        # Keep what the worker saved (e.g. steps timed before the kill).
        result["status"] = "timeout" if not result.get("step_s") else "partial_timeout"
        result["timeout_s"] = args.timeout_s
    elif rc != 0 and result.get("status") in (None, "error"):
        result["status"] = f"failed (rc={rc})"
    return result


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def _table_header(args, base, has_gpu):
    header = ["variant", "status", "replicas", "global batch", "compile s", "median s/step"]
    header += ["cpu s/step", "images/s", "peak RSS GiB", "steady RSS GiB"]
    if has_gpu:
        header.append("GPU peak GiB (per GPU)")
    header.append(f"x vs {base['variant']}" if base else "x vs first")
    if args.baseline_s_per_step:
        header.append("speed-up vs baseline")
    if args.baseline_rss_gib:
        header.append("RSS vs baseline")
    return header


def _table_row(args, r, base, has_gpu):
    ips = r.get("images_per_s")
    status = r.get("status", "?")
    row = [
        r["variant"],
        status if len(status) <= 50 else status[:47] + "...",  # in full under the table
        _fmt(r.get("replicas"), "d"),
        _fmt(r.get("global_batch_size"), "d"),
        _fmt(r.get("compile_s"), ".1f"),
        _fmt(r.get("median_s_per_step"), ".3f"),
        _fmt(r.get("median_cpu_s_per_step"), ".2f"),
        _fmt(ips, ".2f"),
        _fmt(r.get("peak_rss_gib"), ".2f"),
        _fmt(r.get("peak_rss_steady_gib"), ".2f"),
    ]
    if has_gpu:
        row.append(distributed.format_gpu_peaks(r.get("gpu_peaks_gib")))
    row.append(_fmt(ips / base["images_per_s"], ".2f") if (ips and base) else "-")
    if args.baseline_s_per_step:
        m = r.get("median_s_per_step")
        row.append(_fmt(args.baseline_s_per_step / m if m else None, ".2f"))
    if args.baseline_rss_gib:
        m = r.get("peak_rss_gib")
        row.append(_fmt(m / args.baseline_rss_gib if m else None, ".2f"))
    return row


def print_table(args, results):
    """Print the run's settings, one table row per variant, then the details."""
    base = next((r for r in results if r.get("images_per_s")), None)
    has_gpu = any(r.get("gpu_peaks_gib") for r in results)
    header = _table_header(args, base, has_gpu)
    rows = [_table_row(args, r, base, has_gpu) for r in results]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    print()
    print(
        f"NVAE train throughput: preset={args.preset} batch={args.batch_size} "
        f"distribute={args.distribute} "
        f"mixed_precision={args.mixed_precision} overrides={args.overrides} "
        + (f"tf_optimizer={dict(args.tf_optimizer)} " if args.tf_optimizer else "")
        + (f"env={args.env} " if args.env else "")
        + f"warmup={args.warmup_steps} timed steps={args.steps}"
    )
    if args.baseline_s_per_step or args.baseline_rss_gib:
        print(
            f"external baseline: {_fmt(args.baseline_s_per_step, '.3f')} s/step, "
            f"{_fmt(args.baseline_rss_gib, '.2f')} GiB peak RSS "
            "(speed-up = baseline s/step / ours; RSS ratio = ours / baseline)"
        )
    print(line(header))
    print(line(["-" * w for w in widths]))
    for row in rows:
        print(line(row))
    _print_details(results)


def _print_details(results):
    """Load averages, profiles, breakdowns and errors of the variants."""
    for r in results:
        la, lb = r.get("loadavg_start"), r.get("loadavg_end")
        if la and lb:
            print(
                f"{r['variant']}: 1-min load average {la[0]:.2f} -> {lb[0]:.2f} on "
                f"{os.cpu_count()} CPUs (other processes competing inflate s/step; "
                "cpu s/step is this process's CPU time)"
            )
    for r in results:
        if r.get("profile"):
            _print_profile(r["variant"], r["profile"])
    for r in results:
        if r.get("breakdown"):
            print(f"\nbreakdown ({r['variant']}), median s per call:")
            for name, v in r["breakdown"].items():
                print(f"  {v['median_s']:8.3f}  (first {v['first_call_s']:7.2f})  {name}")
        if r.get("error"):
            print(f"\n{r['variant']} error: {r['error']}")


def _print_profile(variant, prof):
    print(
        f"\nprofile ({variant}): {prof['op_time_s_per_step']:.2f}s of op time "
        f"(all threads) per step, wall {prof['wall_s_per_step_profiled']:.2f}s"
    )
    for title, key in (
        ("by phase", "by_phase"),
        ("by op type", "by_op_type"),
        ("by op type and phase", "by_op_type_and_phase"),
        ("by layer group", "by_layer_group"),
        ("by sub-layer", "by_sublayer"),
    ):
        print(f"  {title}:")
        for name, sec, frac in prof[key][:15]:
            print(f"    {sec:8.3f}s {100 * frac:5.1f}%  {name}")


def _find_max_batch(args, argv):
    import max_batch

    report = max_batch.find_max_batch(args, argv, os.path.abspath(__file__))
    output = args.output_json or os.path.join(
        _HERE, "results", f"{args.preset}_max_batch_{args.memory_budget_gib:g}gib.json"
    )
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {output}")
    return 0 if report["max_batch"] else 1


def _worker_main(args):
    try:
        run_worker(args)
    except BaseException as e:
        # Record the failure for the parent unless the worker saved results.
        if args._worker_out and not os.path.getsize(args._worker_out):
            with open(args._worker_out, "w") as f:
                json.dump({"status": "error", "error": f"{type(e).__name__}: {e}"}, f)
        raise


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args._worker_xla is not None:
        _worker_main(args)
        # The results are saved: skip the interpreter's teardown of TF state (seconds).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    # Checked here, before any variant runs; workers parse it again after their timed imports.
    from keras_nvae.config import parse_overrides

    try:
        args.overrides = parse_overrides(args.override)
    except ValueError as error:
        parser.error(str(error))
    if args.distribute != "none" and args.breakdown:
        parser.error("--breakdown times one replica's pieces; run it with --distribute none")
    argv = sys.argv[1:] if argv is None else list(argv)
    if args.find_max_batch:
        return _find_max_batch(args, argv)
    variants = {"off": ["off"], "on": ["on"], "both": ["off", "on"]}[args.xla]
    output = args.output_json or os.path.join(
        _HERE, "results", f"{args.preset}_b{args.batch_size}.json"
    )
    results = [run_variant(args, v, argv) for v in variants]
    report = _report(args, results)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump(report, f, indent=2)
    print_table(args, results)
    print(f"\nwrote {output}")
    return 0 if all(r.get("status") == "ok" for r in results) else 1


def _version(name):
    import importlib.metadata as md

    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def _report(args, results):
    """The JSON report: settings, environment and the variants' results with ratios."""
    report = {
        "preset": args.preset,
        "batch_size": args.batch_size,
        "distribute": args.distribute,
        "logical_cpus": args.logical_cpus,
        "overrides": args.overrides,
        "mixed_precision": args.mixed_precision,
        "tf_optimizer": dict(args.tf_optimizer),
        "env": dict(e.split("=", 1) for e in args.env),
        "warmup_steps": args.warmup_steps,
        "steps": args.steps,
        "baseline": {
            "s_per_step": args.baseline_s_per_step,
            "peak_rss_gib": args.baseline_rss_gib,
        },
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "tensorflow": _version("tensorflow"),
            "keras": _version("keras"),
            "keras_nvae": _version("keras_nvae") or _version("keras-nvae"),
            "threads": args.threads,
            "inter_op_threads": args.inter_op_threads,
        },
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": results,
    }
    base = next((r for r in results if r.get("images_per_s")), None)
    for r in results:
        if base and r.get("images_per_s"):
            r["images_per_s_vs_first"] = r["images_per_s"] / base["images_per_s"]
        if args.baseline_s_per_step and r.get("median_s_per_step"):
            r["speedup_vs_baseline"] = args.baseline_s_per_step / r["median_s_per_step"]
        if args.baseline_rss_gib and r.get("peak_rss_gib"):
            r["rss_vs_baseline"] = r["peak_rss_gib"] / args.baseline_rss_gib
    return report


if __name__ == "__main__":
    sys.exit(main())
