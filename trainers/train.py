"""`python -m trainers.train`: the `nvae-train` program, defined in `keras_nvae.cli.train`."""

from keras_nvae.cli.train import main
from keras_nvae.cli.train import run

__all__ = ["main", "run"]

if __name__ == "__main__":
    run()
