r"""Train an NVAE, then report its test bits/dim and write samples.

Usage (`nvae-train` is the installed command; `python -m trainers.train` runs the same):
```
nvae-train            # digits preset on scikit-learn's digits, minutes on a CPU
nvae-train --preset cifar10 --dataset cifar10 --data_dir ~/tensorflow_datasets \
    --distribute mirrored --mixed_precision mixed_bfloat16
```

Everything goes to --output_dir (default `runs/<preset>`): `model.keras` (saved after every
epoch), `checkpoints/` (the training state, saved every --checkpoint_every_steps steps, at every
epoch end and on SIGTERM/SIGINT; removed when the run is finished), `train_steps.jsonl` (the
metrics after every step, one JSON line each), `logs/` (TensorBoard: metrics, and every
--pictures_every_n_epochs epochs sample grids, partial-posterior reconstructions and per-group
KL under `logs/latents`), and at the end `samples.png`, `reconstructions.png` and
`metrics.json`. Every file but the pictures and logs is written under a temporary name and
renamed. Running the same command again after an interruption (even a kill) resumes from the
last save, inside an epoch, and ends with the weights of an uninterrupted run; after SIGTERM or
SIGINT the trainer saves first and exits with status 128 + the signal number.

Progress is Keras' progress bar on a terminal and one line per epoch otherwise, showing the loss,
bits/dim and KL and their validation values (--all_metrics: every metric). The last line
printed to stdout is the test result,
e.g. `test bits/dim: 3.6012 (IW, K=100; 159.78 nats/image); NELBO bits/dim: 3.7011`.
User errors (bad flags, unknown preset, missing data) print one line to stderr and exit with 1.
"""

import math
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging

from keras_nvae.cli.common import CommandLineError
from keras_nvae.cli.common import load_dataset
from keras_nvae.cli.common import one_line
from keras_nvae.cli.common import parse_absl_flags
from keras_nvae.cli.common import program_name
from keras_nvae.cli.common import run_main
from keras_nvae.cli.strategy import make_strategy
from keras_nvae.cli.strategy import worker_directory
from keras_nvae.cli.pictures import picture_callbacks
from keras_nvae.cli.pictures import write_images
from keras_nvae.cli.shared_flags import define_batch_cap_flags
from keras_nvae.cli.shared_flags import define_model_and_data_flags

FLAGS = flags.FlagValues()
define_model_and_data_flags(
    FLAGS,
    eval_split_help="Split used for validation and the final test.",
    epochs_help="Training epochs (default: the preset's).",
    override_help="Repeatable.",
)
flags.DEFINE_bool(
    "download", False, "Let TensorFlow Datasets download and prepare data.", flag_values=FLAGS
)
flags.DEFINE_bool(
    "skip_bad_images",
    False,
    "Image folders: leave out empty, truncated, non-image and undecodable files, with a "
    "warning that counts them, instead of stopping with an error that names them.",
    flag_values=FLAGS,
)
flags.DEFINE_integer(
    "batch_size",
    None,
    "Batch size per replica (default: the preset's, which is per GPU as in the paper).",
    lower_bound=1,
    flag_values=FLAGS,
)
flags.DEFINE_integer(
    "steps_per_epoch",
    None,
    "Steps per epoch over repeated training data (default: one pass over the data).",
    lower_bound=1,
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "output_dir", None, "Run directory (default: runs/<preset>).", flag_values=FLAGS
)
flags.DEFINE_float(
    "learning_rate", None, "Peak learning rate (default: the preset's).", flag_values=FLAGS
)
flags.DEFINE_integer(
    "max_consecutive_nonfinite",
    None,
    "Stop with an error after this many steps in a row with a non-finite loss or gradient "
    "(each is skipped and changes nothing); 0 never stops (default: the config's, 10).",
    lower_bound=0,
    flag_values=FLAGS,
)
flags.DEFINE_float(
    "grad_clip_norm", None, "Clip gradients to this global norm (default: none).",
    lower_bound=0.0, flag_values=FLAGS,
)
flags.DEFINE_float(
    "grad_skip_norm",
    None,
    "Skip updates whose gradient global norm exceeds this, as VDVAE (default: none).",
    lower_bound=0.0,
    flag_values=FLAGS,
)
flags.DEFINE_float(
    "ema_decay",
    None,
    "Keep an exponential moving average of the weights with this decay (e.g. 0.9999) for "
    "evaluation, samples and export (default: none).",
    lower_bound=0.0,
    flag_values=FLAGS,
)
flags.DEFINE_bool(
    "jit_compile",
    None,
    "XLA-compile the train step (default: Keras 'auto', i.e. on for a single GPU).",
    flag_values=FLAGS,
)
flags.DEFINE_enum(
    "mixed_precision",
    "none",
    ["none", "mixed_float16", "mixed_bfloat16"],
    "Keras mixed-precision policy.",
    flag_values=FLAGS,
)
flags.DEFINE_enum(
    "distribute",
    "none",
    ["none", "mirrored", "multi_worker"],
    "tf.distribute strategy: mirrored (all local GPUs) or multi_worker (TF_CONFIG).",
    flag_values=FLAGS,
)
flags.DEFINE_integer(
    "eval_samples",
    100,
    "Importance samples per test image for the final IW bits/dim.",
    lower_bound=1,
    flag_values=FLAGS,
)
define_batch_cap_flags(FLAGS, "Cap on evaluation batches.")
flags.DEFINE_float(
    "temperature", 0.7, "Prior temperature of samples.png.", flag_values=FLAGS
)
flags.register_validator(
    "temperature", lambda value: value > 0, "--temperature must be > 0.", flag_values=FLAGS
)
flags.DEFINE_integer(
    "seed", 0, "Random seed of weights, shuffling and sampling.", flag_values=FLAGS
)
flags.DEFINE_integer(
    "pictures_every_n_epochs",
    5,
    "Write sample grids (temperatures 0.6/0.8/1.0), partial-posterior reconstructions and "
    "per-group KL to TensorBoard every N epochs (0: never; single-device runs only).",
    lower_bound=0,
    flag_values=FLAGS,
)
flags.DEFINE_bool(
    "resume",
    True,
    "Save the training state (every --checkpoint_every_steps steps, every epoch and on "
    "SIGTERM/SIGINT) and resume an interrupted run from it.",
    flag_values=FLAGS,
)
flags.DEFINE_bool(
    "all_metrics",
    False,
    "Show every metric in the progress line, not only the loss, bits/dim and KL and their "
    "validation values (TensorBoard, train_steps.jsonl and metrics.json get them all anyway).",
    flag_values=FLAGS,
)
flags.DEFINE_integer(
    "checkpoint_every_steps",
    500,
    "Save the training state every N steps (with --resume); a kill loses at most N steps.",
    lower_bound=1,
    flag_values=FLAGS,
)

def make_config():
    """The preset's `NVAEConfig` with the flags' overrides applied."""
    from keras_nvae import presets
    from keras_nvae.config import parse_overrides

    if FLAGS.jit_compile and FLAGS.distribute != "none":
        raise CommandLineError(
            "--jit_compile cannot be combined with --distribute: Keras 3 XLA-compiles the "
            "step of all replicas as one computation on one device, which cannot reach the "
            "other replicas' variables. Leave --jit_compile unset (BUILD_NOTES.md, "
            "'XLA with MirroredStrategy')."
        )
    try:
        overrides = parse_overrides(FLAGS.override)
        for name in (
            "epochs",
            "batch_size",
            "learning_rate",
            "max_consecutive_nonfinite",
            "grad_clip_norm",
            "grad_skip_norm",
            "ema_decay",
        ):
            if FLAGS[name].value is not None:
                overrides[name] = FLAGS[name].value
        return presets.preset_config(FLAGS.preset, **overrides)
    except ValueError as error:
        raise CommandLineError(one_line(error)) from None


def make_datasets(config, batch_size):
    """Training and evaluation pipelines, checked against the model's image shape.

    The training data of each epoch is its own pipeline, shuffled and augmented with the
    epoch's seed, so that a resumed run sees the batches an uninterrupted one sees.

    Returns:
        (function of the epoch returning its training batches, evaluation data,
        steps per epoch).
    """
    from keras_nvae.training.checkpointing import epoch_seed

    repeat = FLAGS.steps_per_epoch is not None
    common = dict(batch_size=batch_size, data_dir=FLAGS.data_dir, download=FLAGS.download)
    hint = (
        f"Pick a matching --preset (now {FLAGS.preset!r}) or "
        "--override image_shape=[height,width,channels]."
    )

    def train_data(epoch):
        return load_dataset(
            FLAGS.dataset,
            "train",
            config.image_shape,
            hint=hint,
            skip_bad_images=FLAGS.skip_bad_images,
            repeat=repeat,
            seed=epoch_seed(FLAGS.seed, epoch),
            **common,
        )

    train = train_data(0)
    test = load_dataset(
        FLAGS.dataset,
        FLAGS.eval_split,
        config.image_shape,
        hint=hint,
        skip_bad_images=FLAGS.skip_bad_images,
        shuffle=False,
        seed=FLAGS.seed,
        **common,
    )
    if FLAGS.max_eval_batches:
        test = test.take(FLAGS.max_eval_batches)
    if repeat:
        steps = FLAGS.steps_per_epoch
        if FLAGS.max_train_batches:
            steps = min(steps, FLAGS.max_train_batches)
    else:
        if FLAGS.max_train_batches:
            train = train.take(FLAGS.max_train_batches)
        steps = int(train.cardinality())
        if steps == 0:
            raise CommandLineError(f"--dataset {FLAGS.dataset!r} has no training images.")
        if steps < 0:
            raise CommandLineError(
                f"the length of --dataset {FLAGS.dataset!r} is unknown; pass --steps_per_epoch."
            )
    return train_data, test, steps


def make_callbacks(directory):
    """The latest model (`model.keras`, written atomically) and TensorBoard logs under
    `directory`, and with --all_metrics a progress bar of every metric."""
    import keras

    from keras_nvae.training.callbacks import ProgressBar
    from keras_nvae.training.checkpointing import ModelSaver

    callbacks = [
        ModelSaver(os.path.join(directory, "model.keras")),
        keras.callbacks.TensorBoard(os.path.join(directory, "logs"), write_graph=False),
    ]
    return callbacks + ([ProgressBar("all")] if FLAGS.all_metrics else [])


def fit(model, train_data, test_data, steps, directory, callbacks):
    """Train resumably (see `keras_nvae.checkpointing.fit_resumable`).

    Returns:
        The history: {metric: [value per epoch]}, epochs before a resume included.

    Raises:
        CommandLineError: the training state cannot be saved or restored, too many
            consecutive steps were non-finite, or an image cannot be decoded.
    """
    from keras_nvae.data.image_files import BadImageFileError
    from keras_nvae.training import checkpoint_store
    from keras_nvae.training import checkpointing
    from keras_nvae.training.step_guard import NonFiniteTrainingError

    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        raise CommandLineError(
            f"cannot create the output folder {directory!r} ({error.strerror}); pass a "
            "writable --output_dir."
        ) from None
    try:
        return checkpointing.fit_resumable(
            model,
            train_data,
            epochs=model.config.epochs,
            steps_per_epoch=steps,
            directory=os.path.join(directory, "checkpoints") if FLAGS.resume else None,
            checkpoint_every_steps=FLAGS.checkpoint_every_steps,
            step_log=os.path.join(directory, "train_steps.jsonl"),
            callbacks=callbacks,
            validation_data=test_data,
            verbose=1 if sys.stdout.isatty() else 2,
        )
    except (
        checkpoint_store.CheckpointError,
        checkpoint_store.CheckpointWriteError,
        NonFiniteTrainingError,
    ) as error:
        raise CommandLineError(one_line(error)) from None
    except BadImageFileError as error:
        raise CommandLineError(f"{error} {_what_was_kept(directory)}") from None


def _what_was_kept(directory):
    """Where a run stopped by a bad image left its training state."""
    checkpoints = os.path.join(directory, "checkpoints")
    model_file = os.path.join(directory, "model.keras")
    if FLAGS.resume and os.path.isdir(checkpoints) and os.listdir(checkpoints):
        return (
            f"Training stopped; its last save (every --checkpoint_every_steps steps) is in "
            f"{checkpoints}: after the fix, run the same command again to resume."
        )
    if os.path.exists(model_file):
        return f"Training stopped; the last finished epoch's model is in {model_file}."
    return "Training stopped before its first save; nothing was kept."


def log_training_start(model, config, steps, replicas, directory):
    """Log what is trained on what, for how long, and where the results go."""
    parameters = sum(math.prod(weight.shape) for weight in model.trainable_weights)
    logging.info(
        "Training preset %r (%s trainable parameters) on %r: %d epochs x %d steps, batch "
        "%d x %d replica(s); writing to %s",
        FLAGS.preset,
        f"{parameters:,}",
        FLAGS.dataset,
        config.epochs,
        steps,
        config.batch_size,
        replicas,
        directory,
    )


def evaluate_metrics(model, history, test_data, config, steps, train_seconds):
    """Evaluate the trained model on the test data and gather the run's metrics.

    Args:
        model: the trained `NVAE`.
        history: its training history, {metric: [value per epoch]}.
        test_data: the evaluation dataset.
        config: the model's `NVAEConfig`.
        steps: training steps per epoch.
        train_seconds: wall-clock training time.

    Returns:
        The metrics dict written to metrics.json: the run, the test split's
        importance-weighted and ELBO bits/dim, the training history and config.
    """
    from keras_nvae.inference import evaluation

    elbo = model.evaluate(test_data, return_dict=True, verbose=0)
    iw = evaluation.bits_per_dim(model, test_data, num_samples=FLAGS.eval_samples)
    return {
        "preset": FLAGS.preset,
        "dataset": FLAGS.dataset,
        "epochs": config.epochs,
        "steps_per_epoch": steps,
        "global_step": int(model.global_step.numpy()),
        "train_seconds": round(train_seconds, 1),
        "test": {
            "split": FLAGS.eval_split,
            "iw_bpd": iw["bpd"],
            "iw_nll_nats": iw["nll_nats"],
            "iw_num_samples": FLAGS.eval_samples,
            "num_images": iw["num_images"],
            "nelbo_bpd": float(elbo["bpd"]),
            "nelbo_nats": float(elbo["nelbo"]),
            "recon_nats": float(elbo["recon"]),
            "kl_nats": float(elbo["kl"]),
            "active_groups": float(elbo["active_groups"]),
        },
        "history": {
            name: [float(value) for value in values]
            for name, values in history.items()
        },
        "config": config.to_dict(),
    }


def train():
    """Train and evaluate as the flags say; raises `CommandLineError` for user errors.

    Returns:
        The metrics written to metrics.json.
    """
    config = make_config()
    output_dir = FLAGS.output_dir or os.path.join("runs", FLAGS.preset)

    import keras

    from keras_nvae import NVAE
    from keras_nvae.training import atomic_files, checkpoint_store

    keras.utils.set_random_seed(FLAGS.seed)
    keras.mixed_precision.set_global_policy(
        "float32" if FLAGS.mixed_precision == "none" else FLAGS.mixed_precision
    )
    strategy = make_strategy(FLAGS.distribute)
    directory, is_chief = worker_directory(strategy, output_dir, FLAGS.distribute)
    replicas = strategy.num_replicas_in_sync
    train_data, test_data, steps = make_datasets(config, config.batch_size * replicas)
    with strategy.scope():
        model = NVAE(config)
        model.compile(
            total_steps=config.epochs * steps,
            steps_per_epoch=steps,
            jit_compile="auto" if FLAGS.jit_compile is None else FLAGS.jit_compile,
        )
    log_training_start(model, config, steps, replicas, directory)
    every = 0 if FLAGS.distribute != "none" else FLAGS.pictures_every_n_epochs
    pictures = picture_callbacks(test_data, directory, every, FLAGS.seed)
    callbacks = make_callbacks(directory) + pictures
    start = time.time()
    history = fit(model, train_data, test_data, steps, directory, callbacks)
    train_seconds = time.time() - start

    metrics = evaluate_metrics(model, history, test_data, config, steps, train_seconds)
    if is_chief:
        write_images(model, test_data, directory, FLAGS.temperature, FLAGS.seed)
        try:
            atomic_files.write_json(os.path.join(directory, "metrics.json"), metrics)
        except OSError as error:
            raise CommandLineError(
                one_line(checkpoint_store.write_failure("metrics.json", directory, error))
            ) from None
        logging.info(
            "Wrote %s{model.keras, samples.png, reconstructions.png, metrics.json}; "
            "TensorBoard logs in %s",
            os.path.join(directory, ""),
            os.path.join(directory, "logs"),
        )
    checkpoint_store.CheckpointStore(os.path.join(directory, "checkpoints")).clear()
    test = metrics["test"]
    print(
        f"test bits/dim: {test['iw_bpd']:.4f} (IW, K={FLAGS.eval_samples}; "
        f"{test['iw_nll_nats']:.2f} nats/image); NELBO bits/dim: {test['nelbo_bpd']:.4f}",
        flush=True,
    )
    return metrics


def main(argv):
    """Run the trainer on a command line (`argv[0]` is the program).

    `run` passes the command line without absl's own flags (see
    `keras_nvae.cli.common.parse_absl_flags`); tests call `main` in-process.

    Returns:
        The exit status: 0 on success, 1 on a user error (one line on stderr),
        128 + the signal number after SIGTERM/SIGINT (the state is saved first).
    """
    try:
        return run_main(train, FLAGS, argv, __doc__)
    except Exception as error:
        # Only `train()` imports keras_nvae.training.checkpointing, the sole source of
        # TrainingInterrupted; importing it before would load TensorFlow before
        # the flags are checked.
        checkpointing = sys.modules.get("keras_nvae.training.checkpointing")
        if checkpointing is None or not isinstance(error, checkpointing.TrainingInterrupted):
            raise
        print(f"{program_name(argv)}: {error}", file=sys.stderr)
        return 128 + error.signal_number


def run():
    """The `nvae-train` command: `main` as an `absl.app` program."""
    app.run(main, flags_parser=parse_absl_flags)


if __name__ == "__main__":
    run()
