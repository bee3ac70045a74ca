"""The pictures `nvae-train` writes: sample and reconstruction grids, TensorBoard summaries."""

import math
import os

from keras_nvae.cli.common import write_png
from keras_nvae.inference.grids import image_grid

NUM_SAMPLES = 64
NUM_RECONSTRUCTIONS = 16
NUM_PICTURE_IMAGES = 8


def picture_callbacks(test, directory, every_n_epochs, seed):
    """The `LatentSummaries` callback writing pictures every `every_n_epochs` (none when 0).

    Args:
        test: the evaluation dataset; its first batch is pictured.
        directory: the run directory (summaries go to its `logs/`).
        every_n_epochs: how often; 0 for never.
        seed: the seed of the pictured samples.

    Returns:
        A list of zero or one callbacks.
    """
    from keras_nvae.training.callbacks import LatentSummaries

    if not every_n_epochs:
        return []
    images = _float_images(next(iter(test))[:NUM_PICTURE_IMAGES])
    return [
        LatentSummaries(
            os.path.join(directory, "logs"), images, every_n_epochs=every_n_epochs, seed=seed
        )
    ]


def _float_images(images):
    import numpy as np

    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    return images.astype(np.float32)


def write_images(model, test, directory, temperature, seed):
    """Write samples.png (8x8 prior samples) and reconstructions.png (inputs over outputs).

    Args:
        model: the trained `NVAE`.
        test: the evaluation dataset; its first batch is reconstructed.
        directory: where the files go.
        temperature: the prior temperature of the samples.
        seed: the seed of the samples.
    """
    import numpy as np

    inputs = _float_images(next(iter(test))[:NUM_RECONSTRUCTIONS])
    outputs = np.asarray(model.reconstruct(inputs))
    write_png(
        os.path.join(directory, "reconstructions.png"),
        image_grid(
            np.concatenate([inputs, outputs]), len(inputs), padding=2, min_cell_size=32
        ),
    )
    samples = model.sample(NUM_SAMPLES, temperature=temperature, seed=seed)
    write_png(
        os.path.join(directory, "samples.png"),
        image_grid(
            np.asarray(samples), int(math.sqrt(NUM_SAMPLES)), padding=2, min_cell_size=32
        ),
    )
