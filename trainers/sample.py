"""`python -m trainers.sample`: the `nvae-sample` program, defined in `keras_nvae.cli.sample`."""

from keras_nvae.cli.sample import main
from keras_nvae.cli.sample import run

__all__ = ["main", "run"]

if __name__ == "__main__":
    run()
