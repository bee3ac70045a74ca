r"""Evaluate a trained NVAE: importance-weighted test bits/dim (and nats) plus the NELBO,
per-image anomaly scores, or the FID of its samples.

Usage (`nvae-evaluate` is the installed command; `python -m trainers.evaluate` runs the same):
```
nvae-evaluate --model runs/digits/model.keras    # digits test split
nvae-evaluate --model cifar10.keras --dataset cifar10 \
    --data_dir ~/tensorflow_datasets --num_samples 1000
# per-image bits/dim (importance weighted) as a CSV
nvae-evaluate --model runs/digits/model.keras --mode score --num_samples 10 --output scores.csv
# FID of 10,000 samples against the test split, Keras' ImageNet InceptionV3 features
nvae-evaluate --model cifar10.keras --dataset cifar10 --mode fid \
    --inception_weights inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5 \
    --fid_stats cifar10_test_fid.npz
```

Batch normalisation uses the training statistics, as in the paper's evaluation; --readjust_bn
first re-estimates the decoder's statistics from prior samples (the official `--readjust_bn`).
User errors (bad flags, missing or corrupt model file, missing data) print one line to stderr
and exit with 1.
"""

import os

from absl import app
from absl import flags

from keras_nvae.cli.common import CommandLineError
from keras_nvae.cli.common import load_dataset
from keras_nvae.cli.common import load_model
from keras_nvae.cli.common import one_line
from keras_nvae.cli.common import parse_absl_flags
from keras_nvae.cli.common import run_main

FLAGS = flags.FlagValues()
flags.DEFINE_enum(
    "mode",
    "bpd",
    ["bpd", "score", "fid"],
    "bpd: IW bits/dim and NELBO of the split; score: per-image IW bits/dim written to --output "
    "as CSV; fid: FID of --num_fid_images samples against the split.",
    flag_values=FLAGS,
)
flags.DEFINE_string("model", None, "The .keras file written by training.", flag_values=FLAGS)
flags.DEFINE_string(
    "dataset",
    "digits",
    "Data source for keras_nvae.data.make_dataset ('digits', a TensorFlow Datasets name, an "
    "image folder or a .npy/.npz file).",
    flag_values=FLAGS,
)
flags.DEFINE_string("data_dir", None, "TensorFlow Datasets data directory.", flag_values=FLAGS)
flags.DEFINE_string("split", "test", "Split to evaluate.", flag_values=FLAGS)
flags.DEFINE_integer(
    "batch_size", None, "Batch size (default: the model's).", lower_bound=1, flag_values=FLAGS
)
flags.DEFINE_integer(
    "num_samples",
    1000,
    "Importance samples per image (the paper uses 1000).",
    lower_bound=1,
    flag_values=FLAGS,
)
flags.DEFINE_integer(
    "max_batches", None, "Evaluate only this many batches.", lower_bound=1, flag_values=FLAGS
)
flags.DEFINE_bool(
    "readjust_bn", False, "Re-adjust the decoder's BN statistics first.", flag_values=FLAGS
)
flags.DEFINE_float(
    "temperature",
    1.0,
    "Prior temperature of the BN re-adjustment samples.",
    flag_values=FLAGS,
)
flags.register_validator(
    "temperature", lambda value: value > 0, "--temperature must be > 0.", flag_values=FLAGS
)
flags.DEFINE_integer(
    "seed",
    0,
    "Random seed of the BN re-adjustment samples and of the importance samples.",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "output", "scores.csv", "CSV file of --mode score (index, bits_per_dim).", flag_values=FLAGS
)
flags.DEFINE_string(
    "inception_weights",
    None,
    "--mode fid: the local file inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5 "
    "(Keras' ImageNet InceptionV3 without top).",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "fid_stats", None, "--mode fid: .npz cache of the split's feature statistics.",
    flag_values=FLAGS,
)
flags.DEFINE_integer(
    "num_fid_images", 10000, "--mode fid: samples drawn.", lower_bound=2, flag_values=FLAGS
)
flags.DEFINE_float(
    "fid_temperature", 1.0, "--mode fid: prior temperature of the samples.", flag_values=FLAGS
)
flags.register_validator(
    "fid_temperature", lambda value: value > 0, "--fid_temperature must be > 0.",
    flag_values=FLAGS,
)


def evaluate():
    """Evaluate as the flags say; raises `CommandLineError` for user errors.

    Returns:
        --mode bpd: dict with the IW result (`nll_nats`, `bpd`, `num_images`) and
        `nelbo_bpd`; score: {"scores": per-image bits/dim, "output": the CSV path};
        fid: {"fid": the FID}.
    """
    import keras

    from keras_nvae.inference import evaluation

    keras.utils.set_random_seed(FLAGS.seed)
    model = load_model(FLAGS.model)
    config = model.config
    dataset = load_dataset(
        FLAGS.dataset,
        FLAGS.split,
        config.image_shape,
        batch_size=FLAGS.batch_size or config.batch_size,
        data_dir=FLAGS.data_dir,
        shuffle=False,
        seed=FLAGS.seed,
    )
    if FLAGS.max_batches:
        dataset = dataset.take(FLAGS.max_batches)
    if FLAGS.readjust_bn:
        evaluation.readjust_bn(model, temperature=FLAGS.temperature, seed=FLAGS.seed)
    if FLAGS.mode == "score":
        return _write_scores(model, dataset)
    if FLAGS.mode == "fid":
        return _fid(model, dataset)
    return _bits_per_dim(model, dataset)


def _bits_per_dim(model, dataset):
    from keras_nvae.inference import evaluation

    if not model.compiled:
        model.compile()
    elbo = model.evaluate(dataset, return_dict=True, verbose=0)
    result = evaluation.bits_per_dim(
        model, dataset, num_samples=FLAGS.num_samples, seed=FLAGS.seed
    )
    result["nelbo_bpd"] = float(elbo["bpd"])
    print(
        f"{FLAGS.split} bits/dim: {result['bpd']:.4f} (IW, K={FLAGS.num_samples}; "
        f"{result['nll_nats']:.2f} nats/image; {result['num_images']} images); "
        f"NELBO bits/dim: {result['nelbo_bpd']:.4f}",
        flush=True,
    )
    return result


def _write_scores(model, dataset):
    import numpy as np

    from keras_nvae.inference import evaluation

    scores = evaluation.scores(model, dataset, FLAGS.num_samples, verbose=1, seed=FLAGS.seed)
    directory = os.path.dirname(os.path.abspath(FLAGS.output))
    os.makedirs(directory, exist_ok=True)
    rows = np.stack([np.arange(len(scores)), scores], axis=1)
    np.savetxt(
        FLAGS.output, rows, fmt=["%d", "%.6f"], delimiter=",", header="index,bits_per_dim",
        comments="",
    )
    print(
        f"{FLAGS.split}: {len(scores)} anomaly scores (IW bits/dim, K={FLAGS.num_samples}; "
        f"mean {scores.mean():.4f}) written to {FLAGS.output}",
        flush=True,
    )
    return {"scores": scores, "output": FLAGS.output}


def _fid(model, dataset):
    from keras_nvae.inference import evaluation
    from keras_nvae.inference import fid as fid_lib

    try:
        features = fid_lib.inception_feature_network(FLAGS.inception_weights)
    except (OSError, ValueError) as error:
        raise CommandLineError(f"--inception_weights: {one_line(error)}") from None
    value = evaluation.fid(
        model,
        dataset,
        num_images=FLAGS.num_fid_images,
        temperature=FLAGS.fid_temperature,
        feature_network=features,
        cache_path=FLAGS.fid_stats,
        seed=FLAGS.seed,
    )
    print(
        f"FID: {value:.3f} ({FLAGS.num_fid_images} samples at temperature "
        f"{FLAGS.fid_temperature} against {FLAGS.dataset} {FLAGS.split}; Keras ImageNet "
        "InceptionV3 features, comparable between runs only)",
        flush=True,
    )
    return {"fid": value}


def main(argv):
    """Run the evaluation on a command line (`argv[0]` is the program).

    `run` passes the command line without absl's own flags (see
    `keras_nvae.cli.common.parse_absl_flags`); tests call `main` in-process.

    Returns:
        The exit status: 0 on success, 1 on a user error (one line on stderr).
    """
    return run_main(evaluate, FLAGS, argv, __doc__)


def run():
    """The `nvae-evaluate` command: `main` as an `absl.app` program."""
    app.run(main, flags_parser=parse_absl_flags)


if __name__ == "__main__":
    run()
