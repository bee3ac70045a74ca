r"""Convert an official NVAE checkpoint (NVlabs/NVAE) to a Keras model.

Reads the official `checkpoint.pt` (needs torch: `pip install 'keras_nvae[convert]'`) or a `.npz`
export of it (flags as JSON under `args_json`, tensors under `param/<name>`), builds the matching
`keras_nvae.NVAE`, loads every tensor and saves a `.keras` file, a preset directory that
`NVAE.from_preset(DIR)` loads, or both (and, optionally, a TensorFlow SavedModel).

Usage (`nvae-convert` is the installed command; `python -m trainers.convert` runs the same):
```
nvae-convert --checkpoint=eval-cifar10/checkpoint.pt --output=nvae_cifar10.keras \
    [--preset_dir=nvae_cifar10] [--saved_model=nvae_cifar10_savedmodel] [--official_dmol]
```

`--official_dmol` keeps the official 8-bit DMoL quirks (right edge at 0.99, which leaves the
likelihood unnormalised, and sampling temperature dividing the logistic scale); only use it to
reproduce the official numbers exactly. See docs/official_checkpoints.md.

Errors (missing file, unreadable, refused or mismatched checkpoint, torch missing) print one
message to stderr and exit with status 1.
"""

import os

from absl import app
from absl import flags
from absl import logging

from keras_nvae.cli.common import CommandLineError
from keras_nvae.cli.common import one_line
from keras_nvae.cli.common import parse_absl_flags
from keras_nvae.cli.common import run_main

# A private FlagValues (the convention of keras_nvae.cli): importing this program next to the
# others, which also define e.g. --checkpoint or --output, never clashes; `main` parses it.
FLAGS = flags.FlagValues()
flags.DEFINE_string(
    "checkpoint", None, "Official checkpoint.pt, or a .npz export of it.", flag_values=FLAGS
)
flags.DEFINE_string("output", None, "Where to write the Keras model (.keras).", flag_values=FLAGS)
flags.DEFINE_string(
    "preset_dir",
    None,
    "Where to write the model as a preset directory (config.json, model.weights.h5, "
    "metadata.json) that NVAE.from_preset loads.",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "saved_model", None, "Optional directory for a TensorFlow SavedModel export.", flag_values=FLAGS
)
flags.DEFINE_bool(
    "official_dmol",
    False,
    "Reproduce the official (unnormalised 8-bit) DMoL likelihood and its sampling temperature.",
    flag_values=FLAGS,
)



def export_saved_model(model, directory):
    """Write `model` as a TensorFlow SavedModel (see `keras_nvae.export`)."""
    model.export(directory, verbose=False)


def convert_checkpoint(
    checkpoint, output=None, saved_model=None, official_dmol=False, preset_dir=None
):
    """Load an official checkpoint and save it as `.keras` and/or a preset directory (and
    optionally a SavedModel).

    Args:
        checkpoint: path of the official `.pt` or a `.npz` export.
        output: optional path of the `.keras` file to write.
        saved_model: optional SavedModel directory.
        official_dmol: build the model with `official_dmol=True`.
        preset_dir: optional preset directory to write (`NVAE.save_to_preset`); its
            metadata names the checkpoint as the source.

    Returns:
        The loaded `keras_nvae.NVAE`.

    Raises:
        FileNotFoundError, ImportError (torch missing for a `.pt`),
        keras_nvae.convert.OfficialCheckpointError, ValueError (unsupported flags or output path).
    """
    from keras_nvae.official import convert

    if output and not output.endswith(".keras"):
        raise ValueError(f"--output must end in .keras, got {output!r}.")
    overrides = {"official_dmol": True} if official_dmol else {}
    model = convert.load_official_checkpoint(checkpoint, **overrides)
    if output:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        model.save(output)
    if preset_dir:
        name = os.path.basename(checkpoint)
        model.save_to_preset(
            preset_dir,
            description=f"The official NVAE checkpoint {name}, converted by nvae-convert.",
            source=f"converted from the official checkpoint {os.path.abspath(checkpoint)}",
        )
    if saved_model:
        export_saved_model(model, saved_model)
    return model


def convert():
    """Convert as the flags say; raises `CommandLineError` for user errors."""
    from keras_nvae.official import convert as convert_lib

    if not FLAGS.checkpoint:
        raise CommandLineError("--checkpoint is required.")
    if not (FLAGS.output or FLAGS.preset_dir):
        raise CommandLineError("--output or --preset_dir is required.")
    try:
        convert_checkpoint(
            FLAGS.checkpoint,
            FLAGS.output,
            saved_model=FLAGS.saved_model,
            official_dmol=FLAGS.official_dmol,
            preset_dir=FLAGS.preset_dir,
        )
    except (OSError, ImportError, convert_lib.OfficialCheckpointError, ValueError) as error:
        # Missing file, torch not installed, unreadable or mismatched checkpoint, unsupported
        # flags (OfficialCheckpointError is a ValueError; listed for the reader).
        raise CommandLineError(one_line(error)) from None
    for written in (FLAGS.output, FLAGS.preset_dir):
        if written:
            logging.info("Wrote %s", written)
    if FLAGS.saved_model:
        logging.info("Wrote the SavedModel %s", FLAGS.saved_model)


def main(argv):
    """Run the converter on a command line (`argv[0]` is the program).

    `run` passes the command line without absl's own flags (see
    `keras_nvae.cli.common.parse_absl_flags`); tests call `main` in-process.

    Returns:
        The exit status: 0 on success, 1 on a user error (one line on stderr, no traceback).
    """
    return run_main(convert, FLAGS, argv, __doc__)


def run():
    """The `nvae-convert` command: `main` as an `absl.app` program."""
    app.run(main, flags_parser=parse_absl_flags)


if __name__ == "__main__":
    run()
