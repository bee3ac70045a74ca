"""keras_nvae: NVAE (Vahdat & Kautz, NeurIPS 2020) for Keras 3 / TensorFlow."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from keras_nvae import config, distributions, flows, layers, objectives, optimizers, presets  # noqa: E402
from keras_nvae.config import NVAEConfig  # noqa: E402
from keras_nvae.model import NVAE  # noqa: E402

__version__ = "0.1.0"
