"""`python -m trainers.evaluate`: the `nvae-evaluate` program, defined in `keras_nvae.cli.evaluate`."""

from keras_nvae.cli.evaluate import main
from keras_nvae.cli.evaluate import run

__all__ = ["main", "run"]

if __name__ == "__main__":
    run()
