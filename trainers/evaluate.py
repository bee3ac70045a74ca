r"""Evaluate a trained NVAE: importance-weighted test bits/dim (and nats) plus the NELBO.

Usage (`nvae-evaluate` is the installed command; `python -m trainers.evaluate` runs the same):
```
nvae-evaluate --model runs/digits/model.keras    # digits test split
nvae-evaluate --model cifar10.keras --dataset cifar10 \
    --data_dir ~/tensorflow_datasets --num_samples 1000
```

Batch normalisation uses the training statistics, as in the paper's evaluation; --readjust_bn
first re-estimates the decoder's statistics from prior samples (the official `--readjust_bn`).
User errors (bad flags, missing or corrupt model file, missing data) print one line to stderr
and exit with 1.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from trainers import load_dataset  # noqa: E402
from trainers import load_model  # noqa: E402
from trainers import parse_absl_flags  # noqa: E402
from trainers import run_main  # noqa: E402

FLAGS = flags.FlagValues()
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


def evaluate():
    """Evaluate as the flags say; raises `CommandLineError` for user errors.

    Returns:
        dict with the IW result (`nll_nats`, `bpd`, `num_images`) and `nelbo_bpd`.
    """
    import keras

    from keras_nvae import evaluation

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


def main(argv):
    """Run the evaluation on a command line (`argv[0]` is the program).

    `run` passes the command line without absl's own flags (see
    `trainers.parse_absl_flags`); tests call `main` in-process.

    Returns:
        The exit status: 0 on success, 1 on a user error (one line on stderr).
    """
    return run_main(evaluate, FLAGS, argv, __doc__)


def run():
    """The `nvae-evaluate` command: `main` as an `absl.app` program."""
    app.run(main, flags_parser=parse_absl_flags)


if __name__ == "__main__":
    run()
