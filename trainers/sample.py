r"""Draw images from a trained NVAE and write them as one PNG grid.

Usage (`nvae-sample` is the installed command; `python -m trainers.sample` runs the same):
```
nvae-sample --model runs/digits/model.keras --output samples.png
nvae-sample --model cifar10.keras --num 100 --temperature 0.6 \
    --readjust_bn_steps 500 --seed 1
```

--readjust_bn_steps N first re-estimates the decoder's batch-norm statistics from N sampling
passes at --temperature (the official `--readjust_bn` uses 500), which usually improves
low-temperature samples. User errors (bad flags, missing or corrupt model file) print one line
to stderr and exit with 1.
"""

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from trainers import image_grid  # noqa: E402
from trainers import load_model  # noqa: E402
from trainers import parse_absl_flags  # noqa: E402
from trainers import run_main  # noqa: E402
from trainers import write_png  # noqa: E402

FLAGS = flags.FlagValues()
flags.DEFINE_string("model", None, "The .keras file written by training.", flag_values=FLAGS)
flags.DEFINE_integer("num", 64, "Number of samples.", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_float("temperature", 0.7, "Prior temperature (> 0).", flag_values=FLAGS)
flags.register_validator(
    "temperature", lambda value: value > 0, "--temperature must be > 0.", flag_values=FLAGS
)
flags.DEFINE_integer(
    "readjust_bn_steps",
    0,
    "Sampling passes of BN re-adjustment before sampling (0: keep the training statistics).",
    lower_bound=0,
    flag_values=FLAGS,
)
flags.DEFINE_integer("seed", None, "Random seed for reproducible samples.", flag_values=FLAGS)
flags.DEFINE_string("output", "samples.png", "Where to write the PNG grid.", flag_values=FLAGS)


def sample():
    """Sample as the flags say; raises `CommandLineError` for user errors.

    Returns:
        The float32 images in [0, 1], NHWC.
    """
    import keras
    import numpy as np

    from keras_nvae import evaluation

    if FLAGS.seed is not None:
        keras.utils.set_random_seed(FLAGS.seed)
    model = load_model(FLAGS.model)
    if FLAGS.readjust_bn_steps:
        evaluation.readjust_bn(
            model, temperature=FLAGS.temperature, steps=FLAGS.readjust_bn_steps, seed=FLAGS.seed
        )
    images = np.asarray(model.sample(FLAGS.num, temperature=FLAGS.temperature, seed=FLAGS.seed))
    write_png(FLAGS.output, image_grid(images, columns=math.ceil(math.sqrt(FLAGS.num))))
    logging.info(
        "Wrote %d samples (temperature %g) to %s", FLAGS.num, FLAGS.temperature, FLAGS.output
    )
    return images


def main(argv):
    """Run the sampler on a command line (`argv[0]` is the program).

    `run` passes the command line without absl's own flags (see
    `trainers.parse_absl_flags`); tests call `main` in-process.

    Returns:
        The exit status: 0 on success, 1 on a user error (one line on stderr).
    """
    return run_main(sample, FLAGS, argv, __doc__)


def run():
    """The `nvae-sample` command: `main` as an `absl.app` program."""
    app.run(main, flags_parser=parse_absl_flags)


if __name__ == "__main__":
    run()
