"""keras_nvae: NVAE (Vahdat & Kautz, NeurIPS 2020) for Keras 3 / TensorFlow.

The model is `keras_nvae.NVAE`, configured by `keras_nvae.NVAEConfig`. The
subpackages hold the rest: `layers` (the Keras layers), `distributions`,
`training` (the trainer, objectives, optimizers, checkpoints, tuning),
`inference` (sampling, latents, evaluation, FID, export), `data` (dataset
registry and `tf.data` pipelines), `official` (the official PyTorch code's
checkpoints and parity checks) and `cli` (the command-line programs).

The modules users reach most often also have short names, imported on first
use: `keras_nvae.evaluation`, `keras_nvae.convert`, `keras_nvae.tuning`,
`keras_nvae.datasets`, `keras_nvae.checkpointing`, ... (see `_SHORT_NAMES`).
"""

import importlib
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from keras_nvae import config  # noqa: E402
from keras_nvae import data  # noqa: E402
from keras_nvae import distributions  # noqa: E402
from keras_nvae import layers  # noqa: E402
from keras_nvae import presets  # noqa: E402
from keras_nvae.config import NVAEConfig  # noqa: E402
from keras_nvae.model import NVAE  # noqa: E402

__version__ = "0.2.0"

# Short names of modules inside the subpackages. They are imported on first
# access, so `import keras_nvae` loads neither KerasTuner nor torch.
_SHORT_NAMES = {
    "callbacks": "keras_nvae.training.callbacks",
    "checkpointing": "keras_nvae.training.checkpointing",
    "convert": "keras_nvae.official.convert",
    "datasets": "keras_nvae.data.registry",
    "evaluation": "keras_nvae.inference.evaluation",
    "export": "keras_nvae.inference.export",
    "fid": "keras_nvae.inference.fid",
    "flows": "keras_nvae.layers.flows",
    "latents": "keras_nvae.inference.latents",
    "legacy": "keras_nvae.official.legacy",
    "loading": "keras_nvae.loading",
    "objectives": "keras_nvae.training.objectives",
    "official_layout": "keras_nvae.official.layout",
    "optimizers": "keras_nvae.training.optimizers",
    "parity": "keras_nvae.official.parity",
    "step_guard": "keras_nvae.training.step_guard",
    "tuning": "keras_nvae.training.tuning",
    "weight_average": "keras_nvae.training.weight_average",
}
_SUBPACKAGES = ("cli", "inference", "official", "training")


def __getattr__(name):
    if name in _SHORT_NAMES:
        module = importlib.import_module(_SHORT_NAMES[name])
    elif name in _SUBPACKAGES:
        module = importlib.import_module(f"keras_nvae.{name}")
    else:
        raise AttributeError(f"module 'keras_nvae' has no attribute {name!r}")
    globals()[name] = module
    return module


def __dir__():
    return sorted(set(globals()) | set(_SHORT_NAMES) | set(_SUBPACKAGES))
