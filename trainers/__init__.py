"""The command-line programs under their user-facing names.

`python -m trainers.train` (and `trainers.evaluate`, `trainers.sample`,
`trainers.convert`, `trainers.tune`, `trainers.parity`) runs the program of
the same name in `keras_nvae.cli`; the installed commands `nvae-train`, ...
call the same `run` functions. TensorFlow's C++ log lines below warnings are
hidden (`TF_CPP_MIN_LOG_LEVEL=2` unless set), which has to happen before
`keras_nvae` imports TensorFlow.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
