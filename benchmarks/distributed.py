"""Devices, strategy, input and per-device memory of a `train_throughput.py` worker.

`--distribute mirrored` trains under a `tf.distribute.MirroredStrategy`: over all
visible GPUs, or over `--logical_cpus N` logical CPU devices (to run the
multi-device path on a machine without GPUs). `--batch_size` is per replica, so a
step trains `batch_size x replicas` images.
"""

_GIB = 1024.0**3


def add_flags(parser):
    """Add `--distribute` and `--logical_cpus` to `train_throughput.py`'s parser."""
    parser.add_argument(
        "--distribute",
        choices=("none", "mirrored"),
        default="none",
        help="train under tf.distribute.MirroredStrategy (all GPUs, or --logical_cpus "
        "CPU devices); --batch_size is per replica",
    )
    parser.add_argument(
        "--logical_cpus",
        type=int,
        default=0,
        help="split the CPU into N logical devices; --distribute mirrored mirrors over "
        "them (runs the multi-device path without GPUs)",
    )


def variant_name(distribute, xla):
    """`xla_off` / `xla_on`, prefixed by the strategy when it is not the default."""
    return f"xla_{xla}" if distribute == "none" else f"{distribute}_xla_{xla}"


def split_cpu(tf, logical_cpus):
    """Split the CPU into `logical_cpus` logical devices (before any TF op runs).

    Args:
        tf: the `tensorflow` module.
        logical_cpus: number of logical CPU devices; 0 or 1 leaves the CPU whole.
    """
    if logical_cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus
        )


def make_strategy(tf, distribute, logical_cpus):
    """The strategy a worker builds and trains its model under.

    Args:
        tf: the `tensorflow` module.
        distribute: `"none"` or `"mirrored"`.
        logical_cpus: with `"mirrored"`, mirror over this many logical CPUs
            instead of the visible GPUs (0: the GPUs, as `nvae-train --distribute
            mirrored` does).

    Returns:
        A `tf.distribute.Strategy`.
    """
    if distribute == "mirrored" and logical_cpus > 1:
        return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(logical_cpus)])
    from keras_nvae.cli.strategy import make_strategy as cli_strategy

    return cli_strategy(distribute)


def image_dataset(tf, strategy, images):
    """An endless dataset of `images` (one global batch per element) for `strategy`.

    Args:
        tf: the `tensorflow` module.
        strategy: the worker's strategy; with more than one replica the dataset is
            distributed, each replica getting `len(images) / replicas` images.
        images: uint8 array, one global batch.

    Returns:
        A dataset, or a distributed dataset.
    """
    if strategy.num_replicas_in_sync == 1:
        return tf.data.Dataset.from_tensors((tf.constant(images),)).repeat()
    dataset = tf.data.Dataset.from_tensor_slices((images,)).batch(len(images)).repeat()
    return strategy.experimental_distribute_dataset(dataset)


def gpu_names(tf):
    """The logical GPU devices' short names (`"GPU:0"`, ...), empty without GPUs."""
    return [f"GPU:{i}" for i in range(len(tf.config.list_logical_devices("GPU")))]


def gpu_peaks_gib(tf, names):
    """Allocator peak of each GPU in GiB since its last reset, in the order of `names`."""
    return [tf.config.experimental.get_memory_info(name)["peak"] / _GIB for name in names]


def reset_gpu_peaks(tf, names):
    """Reset the allocator peak of each GPU in `names`."""
    for name in names:
        tf.config.experimental.reset_memory_stats(name)


def format_gpu_peaks(peaks):
    """`"3.10/3.05"`: the per-GPU peaks in GiB for a table cell, `"-"` without GPUs."""
    return "-" if not peaks else "/".join(format(peak, ".2f") for peak in peaks)


def refusal(error):
    """`"refused: <one-line reason>"`, the status of XLA + Mirrored when it fails.

    Args:
        error: the worker's `"<ErrorType>: <message>"` text.

    Returns:
        The error type with the first line of its message; for TF's
        `Graph execution error:` the first line after the traceback of the graph node.

    Example:
    ```python
    refusal("InvalidArgumentError: Graph execution error:\n\nDetected at node f ...:\n"
            "  File \"x.py\", line 1\nTrying to access resource ...")
    # 'refused: InvalidArgumentError: Trying to access resource ...'
    ```
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = lines[0] if lines else "error without a message"
    if reason.endswith("Graph execution error:"):
        body = [line for line in lines[1:] if not line.startswith(("Detected at node", "File "))]
        if body:
            reason = reason[: -len("Graph execution error:")] + body[0]
    return "refused: " + reason
