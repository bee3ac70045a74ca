"""`python -m trainers.convert`: the `nvae-convert` program, defined in `keras_nvae.cli.convert`."""

from keras_nvae.cli.convert import main
from keras_nvae.cli.convert import run

__all__ = ["main", "run"]

if __name__ == "__main__":
    run()
