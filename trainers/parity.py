"""`python -m trainers.parity`: the `nvae-parity` program, defined in `keras_nvae.cli.parity`."""

from keras_nvae.cli.parity import main
from keras_nvae.cli.parity import run

__all__ = ["main", "run"]

if __name__ == "__main__":
    run()
