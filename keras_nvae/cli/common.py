"""Command-line programs of keras_nvae, and the helpers they share.

Installing keras_nvae installs them as the commands `nvae-train`, `nvae-evaluate`,
`nvae-sample`, `nvae-convert`, `nvae-tune` and `nvae-parity`; `python -m trainers.train` (and so
on) runs the same programs. Each is an `absl.app` program: its `run()` calls `absl.app.run(main)`, with
`parse_absl_flags` taking absl's own flags (`--verbosity`, `--logtostderr`, ...) off the
command line, and `main(argv)` parses the program's flags and runs it. A program keeps its
flags in a private `absl.flags.FlagValues`, so several programs can be imported into one
process (the tests call `main` in-process) without flag-name clashes.
"""

import os
import sys

from absl import flags

from keras_nvae.errors import first_line

# Answered by the program (its own doc and flags), not by absl.app's generic usage text.
HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "--helpfull")


class CommandLineError(Exception):
    """A user error: printed as one line to stderr, exit status 1."""


def one_line(error):
    """A one-line message for `error` (multi-line messages are joined)."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def program_name(argv):
    """The name error messages start with: `argv[0]` without folder or `.py`."""
    return os.path.splitext(os.path.basename(argv[0]))[0] if argv else "keras_nvae"


def parse_absl_flags(argv):
    """The `flags_parser` of `absl.app.run` for the programs of keras_nvae.cli.

    Parses absl's own flags (logging: `--verbosity`, `--logtostderr`, ...) into
    `absl.flags.FLAGS` and leaves the rest of the command line, help flags
    included, to the program's `main`. A bad absl flag prints one error line
    and exits with status 1.

    Args:
        argv: the full command line (`argv[0]` is the program).

    Returns:
        `argv` without absl's flags, for `main`.
    """
    help_flags = [arg for arg in argv[1:] if arg in HELP_FLAGS]
    try:
        rest = flags.FLAGS([arg for arg in argv if arg not in HELP_FLAGS], known_only=True)
    except flags.Error as error:
        discard_start_up_output()
        print(f"{program_name(argv)}: error: {one_line(error)}", file=sys.stderr)
        sys.exit(1)
    return rest + help_flags


def parse_flags(flag_values, argv, doc):
    """Parse `argv` (`argv[0]` is the program) into `flag_values`.

    Flags set by an earlier parse in the same process are reset to their
    defaults first, so a program's `main` can be called several times.

    Args:
        flag_values: the program's `absl.flags.FlagValues`.
        argv: the command line without absl's own flags.
        doc: the program's help text, printed for `--help`.

    Returns:
        False when help was printed (the caller should exit with status 0),
        True otherwise.

    Raises:
        CommandLineError: unknown flags, bad values or extra arguments.
    """
    if any(arg in HELP_FLAGS for arg in argv[1:]):
        print(doc)
        print(flag_values.get_help())
        if "--helpfull" in argv[1:]:
            print(f"\nabsl flags:\n{flags.FLAGS.get_help()}")
        return False
    if flag_values.is_parsed():
        flag_values.unparse_flags()
    try:
        extra = flag_values(list(argv))[1:]
    except flags.Error as error:
        raise CommandLineError(one_line(error)) from None
    if extra:
        raise CommandLineError(f"unexpected arguments {extra}.")
    return True


_start_up_output = []


def hold_start_up_output(held):
    """Take over `held`, what standard error received since the program started.

    `trainers` holds TensorFlow's start-up lines back while a program is
    imported; the program releases them once its flags parse and drops them
    before it reports a bad flag, which is then the one line on standard error.

    Args:
        held: an object with `release()` and `discard()` (`trainers.StartUpOutput`).
    """
    _start_up_output.append(held)


def release_start_up_output():
    """Write the held start-up output to standard error."""
    while _start_up_output:
        _start_up_output.pop().release()


def discard_start_up_output():
    """Drop the held start-up output (before a one-line usage error)."""
    while _start_up_output:
        _start_up_output.pop().discard()


def run_main(program, flag_values, argv, doc):
    """Parse flags and call `program()`, turning user errors into exit status 1.

    Args:
        program: callable with no arguments; raises `CommandLineError` for user
            errors (any other exception is a bug and keeps its traceback).
        flag_values: the program's `absl.flags.FlagValues`.
        argv: the command line without absl's own flags.
        doc: the program's help text.

    Returns:
        The exit status: 0 on success, 1 on a user error (one line on stderr).
    """
    try:
        if parse_flags(flag_values, argv, doc):
            release_start_up_output()
            program()
    except CommandLineError as error:
        discard_start_up_output()
        print(f"{program_name(argv)}: error: {error}", file=sys.stderr)
        return 1
    return 0


def load_model(path):
    """Load an `NVAE` saved with `model.save(path)` (see `keras_nvae.loading.load_model`).

    Args:
        path: a `.keras` file.

    Returns:
        The `keras_nvae.NVAE`.

    Raises:
        CommandLineError: missing, unreadable or non-NVAE file.
    """
    from keras_nvae import loading

    if not path:
        raise CommandLineError("--model is required (a .keras file written by training).")
    try:
        return loading.load_model(path)
    except FileNotFoundError:
        raise CommandLineError(f"model file {path!r} does not exist.") from None
    except loading.ModelFileError as error:
        raise CommandLineError(f"could not load the model: {one_line(error)}") from None


def load_dataset(source, split, image_shape, hint="", **kwargs):
    """`keras_nvae.data.make_dataset` for a model, with one-line errors.

    Folders and TensorFlow Datasets images are resized to the model's size;
    arrays (digits, .npy/.npz) cannot be resized, so they must match.

    Args:
        source: the `--dataset` value.
        split: split name.
        image_shape: the model's (height, width, channels).
        hint: appended to the message of a shape mismatch.
        **kwargs: other `make_dataset` arguments (batch_size, data_dir, ...).

    Returns:
        The `tf.data.Dataset` of image batches.

    Raises:
        CommandLineError: unknown source or split, missing or unprepared data,
            or images of another shape than `image_shape`.
    """
    from keras_nvae import data

    arrays = source == "digits" or source.lower().endswith((".npy", ".npz"))
    try:
        dataset = data.make_dataset(
            source, split, image_size=None if arrays else image_shape[0], **kwargs
        )
    except data.DatasetNotAvailableError as error:
        raise CommandLineError(
            f"{first_line(error, with_type=False)} Prepare it on a machine with internet access "
            f"(`tfds build {error.name} --data_dir {error.data_dir}`), or pass --download "
            "where the trainer offers it, and point --data_dir at it."
        ) from None
    except (ValueError, OSError) as error:
        raise CommandLineError(f"--dataset {source!r}: {one_line(error)}") from None
    shape = tuple(dataset.element_spec.shape[1:])
    if shape != tuple(image_shape):
        raise CommandLineError(
            f"--dataset {source!r} ({split}) yields images of shape {shape}, but the model "
            f"expects {tuple(image_shape)}. {hint}".rstrip()
        )
    return dataset


def write_png(path, image):
    """Write an image array (height, width, channels) as a PNG file.

    Args:
        path: the file to write; its folder is created.
        image: uint8 values, or floating values in [0, 1] (rounded to 8 bits).
    """
    import numpy as np
    import tensorflow as tf

    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)

    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tf.io.write_file(path, tf.io.encode_png(image))
