"""Importance-weighted evaluation throughput: the batched estimator against a per-sample loop.

For one configuration and each K in --num_samples, on the same image batch in the same
process:

* batched: `model.log_likelihood(x, K, seed=...)`, the library's estimator (one compiled
  `tf.function`; K samples drawn in passes of `images_per_pass` images, by default as many as
  fit in its memory budget);
* loop: what a user writes without it: K calls of a `tf.function` of one forward pass
  `model(x, training=False, noise=eps_k)`, then a log-mean-exp of the K log weights. It uses
  the very noise the estimator draws, so both estimates must agree (float32 reordering only).
  --eager_loop also times the same loop called eagerly, once.

Reports median seconds per batch over --repeats calls after one untimed (compiling) call,
images/s, the speed-up, and the largest relative difference of the two estimates.
--full_images N also times the estimator over N images (batches cycled from the data), the
way `evaluation.bits_per_dim` runs it, compile call included.

Examples:

    python benchmarks/eval_throughput.py --config digits --num_samples 1 10 100
    python benchmarks/eval_throughput.py --config mnist_small --num_samples 1 10 100 \
        --full_images 2000 --full_num_samples 10

See benchmarks/README.md for how to read the output.
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = {
    "digits": ("digits", {}),
    # A small MNIST model: 16 channels, 2 scales of [4, 2] groups.
    "mnist_small": (
        "mnist",
        {"num_channels_enc": 16, "num_channels_dec": 16, "num_groups_per_scale": 4},
    ),
}


def build_parser():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", choices=sorted(CONFIGS), default="digits")
    p.add_argument("--num_samples", type=int, nargs="+", default=[1, 10, 100], help="K values")
    p.add_argument("--batch_size", type=int, default=50, help="images per batch")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per K and method")
    p.add_argument("--images_per_pass", type=int, default=None, help="default: memory budget")
    p.add_argument("--full_images", type=int, default=0, help="images of the full run (0: none)")
    p.add_argument("--full_num_samples", type=int, default=10, help="K of the full run")
    p.add_argument(
        "--eager_loop", action="store_true", help="also time the loop run eagerly (one call)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="JSON path (default benchmarks/results/...)")
    return p


# -------------------------------------------------------------- the two methods
def build_model(name, seed=0):
    """The untrained model of configuration `name` (timings do not depend on weights)."""
    import keras

    from keras_nvae import NVAE

    preset, overrides = CONFIGS[name]
    keras.utils.set_random_seed(seed)
    model = NVAE.from_preset(preset, **overrides)
    model.build((None,) + tuple(model.config.image_shape))
    return model


def benchmark_images(model, count, seed=0):
    """`count` uint8 images of the model's shape: digits for 8x8 models, else random
    binary images (a Bernoulli model accepts only those)."""
    import numpy as np

    from keras_nvae import data

    if tuple(model.config.image_shape) == (8, 8, 1):
        images = data.digits_arrays("test")
        return np.resize(images, (count,) + images.shape[1:])
    rng = np.random.default_rng(seed)
    return (255 * rng.integers(0, 2, (count,) + tuple(model.config.image_shape))).astype("uint8")


def per_sample_noise(model, batch_size, num_samples, images_per_pass, seed):
    """The latent noise `model.log_likelihood(x, num_samples, images_per_pass, seed)` draws,
    as one list of per-group tensors (batch_size, h, w, c) per importance sample."""
    import tensorflow as tf

    from keras_nvae import noise as noise_lib

    copies = min(max(1, images_per_pass // batch_size), num_samples)
    seeds = noise_lib.CallSeeds(seed)
    samples = []
    for index in range(math.ceil(num_samples / copies)):
        folded = seeds.folded(index)
        groups = []
        for group, shape in enumerate(model.latent_shapes):
            eps = tf.random.stateless_normal(
                (batch_size * copies,) + tuple(shape), seed=folded.latent(group)
            )
            groups.append(tf.reshape(eps, (batch_size, copies) + tuple(shape)))
        samples += [[eps[:, j] for eps in groups] for j in range(copies)]
    return samples[:num_samples]


def make_loop_estimator(model, compiled=True):
    """log p(x) from one forward pass per importance sample (a `tf.function` of one pass, or
    eager calls when `compiled` is False)."""
    import tensorflow as tf

    def log_weight(images, noise):
        out = model(images, training=False, noise=noise)
        return -out["recon_nll"] + out["log_p"] - out["log_q"]

    if compiled:
        log_weight = tf.function(log_weight, reduce_retracing=True)

    def estimate(images, noise_per_sample):
        log_w = tf.stack([log_weight(images, noise) for noise in noise_per_sample], axis=1)
        return tf.reduce_logsumexp(log_w, axis=1) - math.log(len(noise_per_sample))

    return estimate


# ------------------------------------------------------------------ measuring
def _timed(fn, repeats):
    start = time.perf_counter()
    first = fn()
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, compile_s, statistics.median(times)


def measure(model, images, num_samples, images_per_pass, repeats, seed, eager_loop=False):
    """Times both methods on one batch; returns a result dict."""
    import numpy as np

    loop = make_loop_estimator(model)
    noise = per_sample_noise(model, len(images), num_samples, images_per_pass, seed)
    batched, batched_compile, batched_s = _timed(
        lambda: model.log_likelihood(images, num_samples, images_per_pass, seed=seed), repeats
    )
    looped, loop_compile, loop_s = _timed(lambda: loop(images, noise), repeats)
    batched, looped = np.asarray(batched, np.float64), np.asarray(looped, np.float64)
    eager = {}
    if eager_loop:
        start = time.perf_counter()
        make_loop_estimator(model, compiled=False)(images, noise)
        eager_s = time.perf_counter() - start
        eager = {"eager_loop_s_per_batch": eager_s, "eager_speedup": eager_s / batched_s}
    return {
        **eager,
        "num_samples": num_samples,
        "batch_size": len(images),
        "images_per_pass": images_per_pass,
        "batched_compile_s": batched_compile,
        "batched_s_per_batch": batched_s,
        "batched_images_per_s": len(images) / batched_s,
        "loop_compile_s": loop_compile,
        "loop_s_per_batch": loop_s,
        "loop_images_per_s": len(images) / loop_s,
        "speedup": loop_s / batched_s,
        "max_relative_difference": float(
            np.max(np.abs(batched - looped)) / np.max(np.abs(looped))
        ),
    }


def full_run(model, images, batch_size, num_samples, images_per_pass, seed):
    """Seconds to estimate log p(x) of all `images` in batches, compile included."""
    start = time.perf_counter()
    for offset in range(0, len(images), batch_size):
        model.log_likelihood(
            images[offset : offset + batch_size], num_samples, images_per_pass, seed=seed
        ).numpy()
    return time.perf_counter() - start


def main(argv=None):
    args = build_parser().parse_args(argv)
    sys.path.insert(0, os.path.dirname(_HERE))
    model = build_model(args.config, args.seed)
    images_per_pass = args.images_per_pass or model.eval_images_per_pass()
    images = benchmark_images(model, max(args.batch_size, args.full_images), args.seed)
    load = [os.getloadavg()[0]]
    rows = [
        measure(
            model, images[: args.batch_size], k, images_per_pass, args.repeats, args.seed,
            args.eager_loop,
        )
        for k in args.num_samples
    ]
    result = {
        "config": args.config,
        "activation_bytes_per_image": model.activation_bytes_per_image(),
        "rows": rows,
    }
    if args.full_images:
        result["full_run"] = {
            "images": args.full_images,
            "num_samples": args.full_num_samples,
            "seconds": full_run(
                model, images[: args.full_images], args.batch_size, args.full_num_samples,
                images_per_pass, args.seed,
            ),
        }
    load.append(os.getloadavg()[0])
    result["load_average_1min"] = load
    _report(result, args)


def _report(result, args):
    print(
        f"config {result['config']}: {result['activation_bytes_per_image'] / 2**20:.2f} MiB of "
        f"activations per image; 1-min load average {result['load_average_1min']}"
    )
    print("| K | batch | images/pass | batched s/batch | loop s/batch | batched img/s | "
          "loop img/s | speed-up | max rel diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        print(
            f"| {r['num_samples']} | {r['batch_size']} | {r['images_per_pass']} | "
            f"{r['batched_s_per_batch']:.3f} | {r['loop_s_per_batch']:.3f} | "
            f"{r['batched_images_per_s']:.1f} | {r['loop_images_per_s']:.1f} | "
            f"{r['speedup']:.2f}x | {r['max_relative_difference']:.1e} |"
        )
        if "eager_loop_s_per_batch" in r:
            print(
                f"  K={r['num_samples']}: eager loop {r['eager_loop_s_per_batch']:.3f} s/batch, "
                f"batched {r['eager_speedup']:.1f}x faster"
            )
    if "full_run" in result:
        full = result["full_run"]
        print(
            f"full run: {full['images']} images at K={full['num_samples']} in "
            f"{full['seconds']:.1f} s (compile included)"
        )
    path = args.output or os.path.join(
        _HERE, "results", f"{result['config']}_eval_throughput.json"
    )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as file:
        json.dump(result, file, indent=2)
    print(f"JSON: {path}")


if __name__ == "__main__":
    main()
