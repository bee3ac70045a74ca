"""The TensorBoard callback: pictures and KL in the event files, BN statistics untouched."""

import glob

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from keras_nvae import NVAE
from keras_nvae import noise
from keras_nvae.training.callbacks import LatentSummaries
from keras_nvae.training.callbacks import bn_statistics


def _events(log_dir):
    (directory,) = {path.rsplit("/", 1)[0] for path in glob.glob(f"{log_dir}/latents/events.*")}
    accumulator = event_accumulator.EventAccumulator(directory, size_guidance={"tensors": 0})
    accumulator.Reload()
    return accumulator


def _image(accumulator, tag):
    # TF2 image summaries hold [width, height, png, ...] as a string tensor.
    (event,) = accumulator.Tensors(tag)
    png = tf.make_ndarray(event.tensor_proto)[2]
    return event.step, tf.io.decode_png(png).numpy()


def test_latent_summaries_write_pictures_and_kl_and_keep_bn(tmp_path):
    model = NVAE.from_preset("tiny")
    images = np.random.RandomState(0).randint(0, 256, (2, 16, 16, 3)).astype("uint8")
    callback = LatentSummaries(
        str(tmp_path), images, every_n_epochs=2, temperatures=(0.6, 1.0), num_samples=4,
        readjust_bn_steps=2, seed=1,
    )
    callback.set_model(model)
    before = [value for _, value in bn_statistics(model)]
    callback.on_epoch_end(0)  # epoch 1 of every 2: nothing written
    assert not glob.glob(f"{tmp_path}/latents/events.*")
    callback.on_epoch_end(1)
    callback.on_train_end()
    # BN re-adjustment ran on a snapshot: every statistic is restored exactly.
    for old, (_, new) in zip(before, bn_statistics(model)):
        np.testing.assert_array_equal(old, new)

    events = _events(tmp_path)
    # Reconstructions: 2 images on top, rows k = 0, 1, 2, 4 below, 1-pixel gaps.
    step, grid = _image(events, "reconstructions")
    assert step == 2 and grid.shape == (5 * 17 + 1, 2 * 17 + 1, 3)
    np.testing.assert_array_equal(grid[1:17, 1:17], images[0])
    for temperature in ("0.6", "1"):
        _, samples = _image(events, f"samples/temperature_{temperature}")
        assert samples.shape == (2 * 17 + 1, 2 * 17 + 1, 3)
    x, _ = model.preprocess_images(images)
    kl = model.forward_terms(x, False, seeds=noise.CallSeeds(1))["kl"].numpy().mean(0)
    for group, value in enumerate(kl):
        (event,) = events.Tensors(f"kl/group_{group}")
        assert float(tf.make_ndarray(event.tensor_proto)) == pytest.approx(value, rel=1e-5)
    assert "kl/per_group" in events.Tags()["tensors"]
    (event,) = events.Tensors("kl/active_groups")
    assert 0 <= float(tf.make_ndarray(event.tensor_proto)) <= 4


def test_latent_summaries_bad_arguments():
    with pytest.raises(ValueError, match="`every_n_epochs` must be an int >= 1"):
        LatentSummaries("logs", None, every_n_epochs=0)
    with pytest.raises(ValueError, match="`readjust_bn_steps` must be an int >= 0"):
        LatentSummaries("logs", None, readjust_bn_steps=-1)
