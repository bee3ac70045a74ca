"""keras_nvae: NVAE (Vahdat & Kautz, NeurIPS 2020) for Keras 3 / TensorFlow.

The model is `keras_nvae.NVAE`, configured by `keras_nvae.NVAEConfig`. The
subpackages hold the rest: `layers` (the Keras layers), `distributions`,
`training` (the trainer, objectives, optimizers, checkpoints, tuning),
`inference` (sampling, latents, evaluation, FID, export), `data` (dataset
registry and `tf.data` pipelines), `official` (the official PyTorch code's
checkpoints and parity checks) and `cli` (the command-line programs).

The modules users reach most often also have short names: `keras_nvae.evaluation`,
`keras_nvae.convert`, `keras_nvae.tuning`, `keras_nvae.datasets`,
`keras_nvae.checkpointing`, ... (see `_MODULES`).
"""

import importlib
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.2.0"

# The model is imported here, so that its Keras classes are registered and
# `keras.saving.load_model` reads `.keras` files after a bare `import keras_nvae`.
# Every other module is imported on first access: KerasTuner (`tuning`) and
# torch (`convert`) load only when those modules are used.
from keras_nvae.config import NVAEConfig  # noqa: E402
from keras_nvae.model import NVAE  # noqa: E402

_MODULES = {
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
    "objectives": "keras_nvae.training.objectives",
    "official_layout": "keras_nvae.official.layout",
    "optimizers": "keras_nvae.training.optimizers",
    "parity": "keras_nvae.official.parity",
    "step_guard": "keras_nvae.training.step_guard",
    "tuning": "keras_nvae.training.tuning",
    "weight_average": "keras_nvae.training.weight_average",
}
_SUBMODULES = (
    "cli",
    "config",
    "data",
    "distributions",
    "inference",
    "inputs",
    "layers",
    "loading",
    "model",
    "network",
    "noise",
    "official",
    "preset_directory",
    "presets",
    "towers",
    "training",
)


def __getattr__(name):
    if name in _MODULES:
        value = importlib.import_module(_MODULES[name])
    elif name in _SUBMODULES:
        value = importlib.import_module(f"keras_nvae.{name}")
    else:
        raise AttributeError(f"module 'keras_nvae' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_MODULES) | set(_SUBMODULES))
