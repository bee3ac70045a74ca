"""`python -m trainers.tune`: the `nvae-tune` program, defined in `keras_nvae.cli.tune`."""

from keras_nvae.cli.tune import main
from keras_nvae.cli.tune import run

__all__ = ["main", "run"]

if __name__ == "__main__":
    run()
