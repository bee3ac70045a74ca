"""The `tf.distribute` strategy of a training run and where each of its processes writes."""

import os

from keras_nvae.cli.common import CommandLineError


def make_strategy(distribute):
    """The `tf.distribute` strategy of `--distribute` (create it before any model).

    Args:
        distribute: `"none"`, `"mirrored"` or `"multi_worker"`.

    Returns:
        A `tf.distribute.Strategy`.

    Raises:
        CommandLineError: `"multi_worker"` without `TF_CONFIG`.
    """
    import tensorflow as tf

    if distribute == "mirrored":
        return tf.distribute.MirroredStrategy()
    if distribute == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise CommandLineError(
                "--distribute multi_worker needs the TF_CONFIG environment variable "
                "(the cluster and this worker's task)."
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def worker_directory(strategy, output_dir, distribute):
    """Where this process writes: `output_dir` for the chief, a subfolder otherwise.

    Args:
        strategy: the strategy of `make_strategy(distribute)`.
        output_dir: the run's output directory.
        distribute: the `--distribute` value.

    Returns:
        (directory, is_chief).
    """
    if distribute != "multi_worker":
        return output_dir, True
    resolver = strategy.cluster_resolver
    task_type, task_id = resolver.task_type, resolver.task_id
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    if task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief):
        return output_dir, True
    return os.path.join(output_dir, f"{task_type}_{task_id}"), False
