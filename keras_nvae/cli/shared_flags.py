"""The flags `nvae-train` and `nvae-tune` share: preset, data source, epochs, overrides, batch caps."""

from absl import flags


def define_model_and_data_flags(flag_values, eval_split_help, epochs_help, override_help):
    """Define `--preset`, `--dataset`, `--data_dir`, `--eval_split`, `--epochs`, `--override`.

    Args:
        flag_values: the program's `absl.flags.FlagValues`.
        eval_split_help: what the program uses `--eval_split` for.
        epochs_help: what `--epochs` counts in the program.
        override_help: how the program applies `--override`.

    Example:

    >>> FLAGS = flags.FlagValues()
    >>> define_model_and_data_flags(FLAGS, "Split to evaluate.", "Epochs.", "Repeatable.")
    """
    flags.DEFINE_string(
        "preset", "digits", "Model preset, one of NVAE.presets.", flag_values=flag_values
    )
    flags.DEFINE_string(
        "dataset",
        "digits",
        "Data source for keras_nvae.data.make_dataset: 'digits', a TensorFlow Datasets name "
        "(e.g. cifar10, mnist), a folder of PNG/JPEG images, or a .npy/.npz file (arrays "
        "named after their splits).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "data_dir", None, "TensorFlow Datasets data directory.", flag_values=flag_values
    )
    flags.DEFINE_string("eval_split", "test", eval_split_help, flag_values=flag_values)
    flags.DEFINE_integer("epochs", None, epochs_help, lower_bound=1, flag_values=flag_values)
    flags.DEFINE_multi_string(
        "override",
        [],
        "NVAEConfig field as key=value (value parsed as JSON, else a string), e.g. "
        f"--override num_channels_enc=32 --override image_shape=[16,16,3]. {override_help}",
        flag_values=flag_values,
    )


def define_batch_cap_flags(flag_values, eval_batches_help):
    """Define `--max_train_batches` and `--max_eval_batches` (both default: no cap).

    Args:
        flag_values: the program's `absl.flags.FlagValues`.
        eval_batches_help: what `--max_eval_batches` caps in the program.

    Example:

    >>> FLAGS = flags.FlagValues()
    >>> define_batch_cap_flags(FLAGS, "Cap on evaluation batches.")
    """
    flags.DEFINE_integer(
        "max_train_batches",
        None,
        "Cap on training batches per epoch.",
        lower_bound=1,
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "max_eval_batches", None, eval_batches_help, lower_bound=1, flag_values=flag_values
    )
