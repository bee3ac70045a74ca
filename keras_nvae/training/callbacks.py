"""Keras callbacks for NVAE training: a readable progress bar, and pictures and latent
statistics in TensorBoard."""

import keras
import numpy as np
import tensorflow as tf

from keras_nvae.inference import evaluation
from keras_nvae.inference.grids import image_grid
from keras_nvae.inference import latents
from keras_nvae import noise
from keras_nvae.training import objectives


# What the progress bar of `NVAE.fit` shows, with their `val_` twins.
PROGRESS_METRICS = ("loss", "bpd", "kl")


class ProgressBar(keras.callbacks.ProgbarLogger):
    """Keras' progress bar, showing only some of the metrics.

    `NVAE.fit` adds one showing `PROGRESS_METRICS` (the loss, bits/dim and KL,
    and their validation values) unless its callbacks hold a
    `keras.callbacks.ProgbarLogger` already. The logs themselves keep every
    metric, so `TensorBoard`, `CSVLogger`, the history and other callbacks
    see them all.

    Args:
        metrics: the names of the metrics to show (each also with its `val_`
            prefix), or `"all"` for every metric, as Keras'
            `ProgbarLogger` shows them.

    Example:
    ```python
    model.fit(train, epochs=50, callbacks=[ProgressBar("all")])  # every metric
    model.fit(train, epochs=50, callbacks=[ProgressBar(["bpd", "active_groups"])])
    ```
    """

    def __init__(self, metrics=PROGRESS_METRICS):
        super().__init__()
        if isinstance(metrics, str) and metrics != "all":
            raise ValueError(
                f"`metrics` must be 'all' or a list of metric names, got {metrics!r}."
            )
        self.shown_metrics = None if metrics == "all" else tuple(metrics)

    def _shown(self, logs):
        if not logs or self.shown_metrics is None:
            return logs
        names = self.shown_metrics + tuple(f"val_{name}" for name in self.shown_metrics)
        return {name: logs[name] for name in names if name in logs}

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, self._shown(logs))

    def on_test_batch_end(self, batch, logs=None):
        super().on_test_batch_end(batch, self._shown(logs))

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, self._shown(logs))

    def on_test_end(self, logs=None):
        super().on_test_end(self._shown(logs))


def with_progress_bar(callbacks, verbose):
    """`callbacks` and a default `ProgressBar`, unless they show progress already.

    Args:
        callbacks: the `callbacks` argument of `fit` (None, a list, or a
            `keras.callbacks.CallbackList`, which is returned as it is).
        verbose: the `verbose` argument of `fit`; 0 adds nothing.

    Returns:
        The callbacks to pass on to Keras.
    """
    if verbose == 0 or isinstance(callbacks, keras.callbacks.CallbackList):
        return callbacks
    callbacks = list(callbacks or [])
    if not any(isinstance(c, keras.callbacks.ProgbarLogger) for c in callbacks):
        callbacks.append(ProgressBar())
    return callbacks


class LatentSummaries(keras.callbacks.Callback):
    """Writes samples, reconstructions and per-group KL to TensorBoard.

    Every `every_n_epochs` epochs it writes, at the epoch number as step:
    - `samples/temperature_T`: a grid of prior samples at each temperature,
      drawn after BN re-adjustment at that temperature (see
      `keras_nvae.evaluation.readjust_bn`) on the model's BN statistics,
      which are restored afterwards, so training does not see it;
    - `reconstructions`: the images on top, below them one row per k of
      `num_posterior_groups` (see `NVAE.reconstruct`);
    - `kl/group_G` scalars, a `kl/per_group` histogram of the groups' KL (nats
      per image, batch mean) and `kl/active_groups`, measured on the images
      (BN in inference mode).
    Pictures use a fixed seed, so epochs are comparable.

    Args:
        log_dir: TensorBoard log directory; events go to `log_dir/latents`.
        images: a batch of images (NHWC) to reconstruct and measure KL on.
        every_n_epochs: int >= 1.
        temperatures: temperatures of the sample grids.
        num_samples: samples per grid.
        readjust_bn_steps: BN re-adjustment passes before each grid (0: none).
        num_posterior_groups: the k of each reconstruction row (default 0,
            1, 2, 4, ..., all groups).
        seed: int seed of the pictures.

    Example:
    ```python
    callback = LatentSummaries("runs/logs", next(iter(test))[:8], every_n_epochs=5)
    model.fit(train, epochs=50, callbacks=[callback])
    ```
    """

    def __init__(
        self,
        log_dir,
        images,
        every_n_epochs=1,
        temperatures=(0.6, 0.8, 1.0),
        num_samples=16,
        readjust_bn_steps=20,
        num_posterior_groups=None,
        seed=0,
    ):
        super().__init__()
        for name, value, low in (
            ("every_n_epochs", every_n_epochs, 1),
            ("num_samples", num_samples, 1),
            ("readjust_bn_steps", readjust_bn_steps, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"`{name}` must be an int >= {low}, got {value!r}.")
        self.log_dir = log_dir
        self.images = images
        self.every_n_epochs = every_n_epochs
        self.temperatures = tuple(temperatures)
        self.num_samples = num_samples
        self.readjust_bn_steps = readjust_bn_steps
        self.num_posterior_groups = num_posterior_groups
        self.seed = seed
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(f"{self.log_dir}/latents")
        with self._writer.as_default(step=epoch + 1):
            self._write_kl()
            self._write_reconstructions()
            for temperature in self.temperatures:
                self._write_samples(temperature)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _write_kl(self):
        x, _ = self.model.preprocess_images(self.images)
        kl = self.model.forward_terms(x, False, seeds=noise.CallSeeds(self.seed))["kl"]
        per_group = tf.reduce_mean(kl, axis=0)
        for index, value in enumerate(per_group.numpy()):
            tf.summary.scalar(f"kl/group_{index}", value)
        tf.summary.histogram("kl/per_group", per_group)
        tf.summary.scalar("kl/active_groups", objectives.active_groups(kl, self.model.config.num_latent_per_group))

    def _write_reconstructions(self):
        _, images = self.model.preprocess_images(self.images)
        rows = [images.numpy()]
        ks = self.num_posterior_groups
        if ks is None:
            ks = latents.posterior_group_rows(self.model.num_groups)
        for k in ks:
            reconstruction = self.model.reconstruct(
                self.images, num_posterior_groups=k, seed=self.seed
            )
            rows.append(np.asarray(reconstruction))
        grid = image_grid(np.concatenate(rows), columns=len(rows[0]))
        tf.summary.image("reconstructions", grid[None])

    def _write_samples(self, temperature):
        statistics = bn_statistics(self.model)
        try:
            if self.readjust_bn_steps:
                evaluation.readjust_bn(
                    self.model, temperature, steps=self.readjust_bn_steps, seed=self.seed
                )
            samples = np.asarray(self.model.sample(self.num_samples, temperature, seed=self.seed))
        finally:
            restore_bn_statistics(statistics)
        columns = int(np.ceil(np.sqrt(self.num_samples)))
        grid = image_grid(samples, columns)
        tf.summary.image(f"samples/temperature_{temperature:g}", grid[None])


def bn_statistics(model):
    """(variable, value) of every BN moving mean and variance of `model`."""
    return [(variable, variable.numpy()) for variable in model.bn_moving_variables()]


def restore_bn_statistics(statistics):
    """Assign the values `bn_statistics` returned back to their variables."""
    for variable, value in statistics:
        variable.assign(value)
