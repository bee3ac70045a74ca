"""What `import keras_nvae` loads and registers, and the short names of its modules."""

import json
import os
import subprocess
import sys

import pytest

import keras_nvae

LEGACY_FILE = os.path.join(os.path.dirname(__file__), "fixtures", "legacy_tiny.keras")
# Heavy optional dependencies: KerasTuner for `keras_nvae.tuning`, torch for reading official
# `.pt` checkpoints. Neither may load until those modules are used.
OPTIONAL = ("keras_tuner", "torch")


def _loaded_after(code):
    """The modules of `OPTIONAL` that a fresh interpreter has loaded after running `code`."""
    probe = (
        f"import sys\n{code}\n"
        f"print(__import__('json').dumps([m for m in {OPTIONAL!r} if m in sys.modules]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_bare_import_registers_the_model_and_loads_no_optional_dependency():
    # A Keras user's habit: import the library, then `keras.saving.load_model`. One
    # interpreter for the whole check: TensorFlow's import is most of its time.
    code = (
        "import keras\n"
        "import keras_nvae\n"
        f"model = keras.saving.load_model({LEGACY_FILE!r})\n"
        "assert type(model) is keras_nvae.NVAE, type(model)\n"
        "from keras_nvae import data, evaluation\n"
        "keras_nvae.NVAE.from_preset('tiny')"
    )
    assert _loaded_after(code) == []


@pytest.mark.parametrize(
    "short, module",
    [
        ("convert", "keras_nvae.official.convert"),
        ("parity", "keras_nvae.official.parity"),
        ("evaluation", "keras_nvae.inference.evaluation"),
        ("datasets", "keras_nvae.data.registry"),
        ("checkpointing", "keras_nvae.training.checkpointing"),
        ("step_guard", "keras_nvae.training.step_guard"),
    ],
)
def test_short_names_are_the_modules_in_the_subpackages(short, module):
    assert getattr(keras_nvae, short) is sys.modules[module]


def test_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="no_such_module"):
        keras_nvae.no_such_module
