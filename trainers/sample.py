"""`python -m trainers.sample`: the `nvae-sample` program, defined in `keras_nvae.cli.sample`."""

from trainers import hold_start_up_output

_HELD = hold_start_up_output()
from keras_nvae.cli.sample import main  # noqa: E402
from keras_nvae.cli.sample import run  # noqa: E402
from keras_nvae.cli import common  # noqa: E402

common.hold_start_up_output(_HELD)

__all__ = ["main", "run"]

if __name__ == "__main__":
    run()
