"""keras_nvae: NVAE (Vahdat & Kautz, NeurIPS 2020) for Keras 3 / TensorFlow."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from keras_nvae import (  # noqa: E402
    config,
    convert,
    data,
    datasets,
    distributions,
    evaluation,
    export,
    flows,
    layers,
    loading,
    objectives,
    optimizers,
    parity,
    preset_directory,
    presets,
    tuning,
)
from keras_nvae.config import NVAEConfig  # noqa: E402
from keras_nvae.model import NVAE  # noqa: E402

__version__ = "0.2.0"
