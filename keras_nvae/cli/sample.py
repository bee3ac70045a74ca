r"""Draw images from a trained NVAE: prior samples, partial reconstructions, interpolations.

Usage (`nvae-sample` is the installed command; `python -m trainers.sample` runs the same):
```
nvae-sample --model runs/digits/model.keras --output_dir runs/digits/pictures
nvae-sample --model cifar10.keras --num 100 --temperature 0.6 --readjust_bn_steps 500 --seed 1
nvae-sample --model runs/digits/model.keras --mode reconstruct --num 12
nvae-sample --model runs/digits/model.keras --mode interpolate --num 4 --num_steps 8 \
    --groups 0,1 --interpolation spherical
```

Modes (each writes one PNG and `sample.json`, a record of what was done, to --output_dir):
- `sample`: --num prior samples at --temperature (`samples.png`).
- `reconstruct`: --num images of --dataset (--split) in the top row, below them their
  reconstructions from the top k latent groups' posterior and the other groups' prior at
  --temperature, one row per k of --num_posterior_groups (default 0, 1, 2, 4, ..., all)
  (`reconstructions.png`).
- `interpolate`: --num pairs of --dataset images, one row per pair: the first image, the
  --num_steps images of the latent path, the second image (`interpolations.png`). --groups picks
  the latent groups that move (default all).

--temperature is one float > 0 or one per latent group (comma separated, top group first).
--readjust_bn_steps N first re-estimates the decoder's batch-norm statistics from N sampling
passes at --temperature (the official `--readjust_bn` uses 500), which usually improves
low-temperature samples. User errors (bad flags, missing or corrupt model file) print one line
to stderr and exit with 1.
"""

import json
import math
import os

from absl import app
from absl import flags
from absl import logging

from keras_nvae.cli.common import CommandLineError
from keras_nvae.cli.common import load_dataset
from keras_nvae.cli.common import load_model
from keras_nvae.cli.common import one_line
from keras_nvae.cli.common import parse_absl_flags
from keras_nvae.cli.common import run_main
from keras_nvae.cli.common import write_png
from keras_nvae.inference.grids import image_grid

MODES = ("sample", "reconstruct", "interpolate")
FILES = {
    "sample": "samples.png",
    "reconstruct": "reconstructions.png",
    "interpolate": "interpolations.png",
}

FLAGS = flags.FlagValues()
flags.DEFINE_string("model", None, "The .keras file written by training.", flag_values=FLAGS)
flags.DEFINE_enum("mode", "sample", MODES, "What to draw.", flag_values=FLAGS)
flags.DEFINE_integer(
    "num",
    64,
    "Samples (sample), images (reconstruct) or pairs (interpolate).",
    lower_bound=1,
    flag_values=FLAGS,
)
flags.DEFINE_list(
    "temperature",
    ["0.7"],
    "Prior temperature: one float > 0, or one per latent group (top group first).",
    flag_values=FLAGS,
)
flags.DEFINE_list(
    "num_posterior_groups",
    None,
    "reconstruct: the k of each row (default 0, 1, 2, 4, ..., all groups).",
    flag_values=FLAGS,
)
flags.DEFINE_integer(
    "num_steps", 8, "interpolate: images per path, ends included.", lower_bound=2,
    flag_values=FLAGS,
)
flags.DEFINE_list(
    "groups", None, "interpolate: the latent groups that move (default all).", flag_values=FLAGS
)
flags.DEFINE_enum(
    "interpolation", "linear", ["linear", "spherical"], "interpolate: the path.",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "dataset", "digits", "reconstruct/interpolate: the images' data source.", flag_values=FLAGS
)
flags.DEFINE_string("split", "test", "reconstruct/interpolate: split.", flag_values=FLAGS)
flags.DEFINE_string("data_dir", None, "TensorFlow Datasets data directory.", flag_values=FLAGS)
flags.DEFINE_integer(
    "readjust_bn_steps",
    0,
    "Sampling passes of BN re-adjustment first (0: keep the training statistics).",
    lower_bound=0,
    flag_values=FLAGS,
)
flags.DEFINE_integer("seed", None, "Random seed for reproducible pictures.", flag_values=FLAGS)
flags.DEFINE_string(
    "output_dir", "samples", "Where to write the PNG and sample.json.", flag_values=FLAGS
)


def _numbers(name, convert):
    values = FLAGS[name].value
    try:
        return [convert(value) for value in values]
    except ValueError:
        raise CommandLineError(
            f"--{name} expects comma-separated numbers, got {values}."
        ) from None


def temperature():
    """--temperature: one float, or a list of one per latent group."""
    values = _numbers("temperature", float)
    return values[0] if len(values) == 1 else values


def posterior_rows(num_groups):
    """The k of each reconstruction row: --num_posterior_groups or 0, 1, 2, 4, ..., all."""
    from keras_nvae.inference import latents

    if FLAGS.num_posterior_groups is not None:
        return _numbers("num_posterior_groups", int)
    return latents.posterior_group_rows(num_groups)


def dataset_images(model, count):
    """The first `count` images of --dataset (--split), as floats in [0, 1]."""
    import numpy as np

    dataset = load_dataset(
        FLAGS.dataset,
        FLAGS.split,
        model.config.image_shape,
        batch_size=count,
        data_dir=FLAGS.data_dir,
        shuffle=False,
    )
    images = np.asarray(next(iter(dataset)))
    if len(images) < count:
        raise CommandLineError(
            f"--dataset {FLAGS.dataset!r} ({FLAGS.split}) has {len(images)} images; "
            f"--mode {FLAGS.mode} --num {FLAGS.num} needs {count}."
        )
    return images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images


def draw(model):
    """The grid of --mode as (images, columns, record of the mode's settings)."""
    import numpy as np

    if FLAGS.mode == "sample":
        images = model.sample(FLAGS.num, temperature=temperature(), seed=FLAGS.seed)
        return np.asarray(images), math.ceil(math.sqrt(FLAGS.num)), {}
    if FLAGS.mode == "reconstruct":
        inputs = dataset_images(model, FLAGS.num)
        rows = posterior_rows(model.num_groups)
        outputs = [
            model.reconstruct(
                inputs, num_posterior_groups=k, temperature=temperature(), seed=FLAGS.seed
            )
            for k in rows
        ]
        grid = np.concatenate([inputs] + [np.asarray(o) for o in outputs])
        return grid, FLAGS.num, {"num_posterior_groups": rows, "rows": ["input"] + rows}
    pairs = dataset_images(model, 2 * FLAGS.num)
    x1, x2 = pairs[: FLAGS.num], pairs[FLAGS.num :]
    groups = None if FLAGS.groups is None else _numbers("groups", int)
    path = np.asarray(
        model.interpolate(
            x1, x2, FLAGS.num_steps, groups=groups, mode=FLAGS.interpolation, seed=FLAGS.seed
        )
    ).reshape((FLAGS.num, FLAGS.num_steps) + x1.shape[1:])
    grid = np.concatenate([x1[:, None], path, x2[:, None]], axis=1)
    grid = grid.reshape((-1,) + x1.shape[1:])
    record = {"num_steps": FLAGS.num_steps, "groups": groups, "interpolation": FLAGS.interpolation}
    return grid, FLAGS.num_steps + 2, record


def sample():
    """Draw as the flags say; raises `CommandLineError` for user errors.

    Returns:
        The record written to sample.json.
    """
    import keras

    from keras_nvae.inference import evaluation

    if FLAGS.seed is not None:
        keras.utils.set_random_seed(FLAGS.seed)
    model = load_model(FLAGS.model)
    try:
        if FLAGS.readjust_bn_steps:
            evaluation.readjust_bn(
                model, temperature=temperature(), steps=FLAGS.readjust_bn_steps, seed=FLAGS.seed
            )
        images, columns, record = draw(model)
    except ValueError as error:
        raise CommandLineError(one_line(error)) from None
    path = os.path.join(FLAGS.output_dir, FILES[FLAGS.mode])
    write_png(path, image_grid(images, columns, padding=2, min_cell_size=32))
    record = {
        "mode": FLAGS.mode,
        "model": FLAGS.model,
        "num": FLAGS.num,
        "temperature": temperature(),
        "readjust_bn_steps": FLAGS.readjust_bn_steps,
        "seed": FLAGS.seed,
        **({} if FLAGS.mode == "sample" else {"dataset": FLAGS.dataset, "split": FLAGS.split}),
        **record,
        "image": FILES[FLAGS.mode],
    }
    with open(os.path.join(FLAGS.output_dir, "sample.json"), "w") as file:
        json.dump(record, file, indent=2)
    logging.info("Wrote %s and sample.json to %s", FILES[FLAGS.mode], FLAGS.output_dir)
    return record


def main(argv):
    """Run the sampler on a command line (`argv[0]` is the program).

    `run` passes the command line without absl's own flags (see
    `keras_nvae.cli.common.parse_absl_flags`); tests call `main` in-process.

    Returns:
        The exit status: 0 on success, 1 on a user error (one line on stderr).
    """
    return run_main(sample, FLAGS, argv, __doc__)


def run():
    """The `nvae-sample` command: `main` as an `absl.app` program."""
    app.run(main, flags_parser=parse_absl_flags)


if __name__ == "__main__":
    run()
