"""The cost of checking an image folder's files against the cost of decoding them.

Writes `--count` random JPEGs of `--size` pixels to a temporary folder, then
times `keras_nvae.data.image_files.usable_files` (first and last bytes of every
file) and one pass of `keras_nvae.data.load_image_folder` (decoding), in
wall-clock and CPU milliseconds per image; medians over `--runs`.

    python benchmarks/image_check.py --count 1000 --size 64 --runs 3
"""

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np
import tensorflow as tf

from keras_nvae import data
from keras_nvae.data import image_files


def timed(function):
    """(wall ms, CPU ms) of `function()`."""
    start, cpu_start = time.perf_counter(), time.process_time()
    function()
    return 1e3 * (time.perf_counter() - start), 1e3 * (time.process_time() - cpu_start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for index in range(args.count):
            image = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
            paths.append(os.path.join(folder, f"{index:06d}.jpg"))
            tf.io.write_file(paths[-1], tf.io.encode_jpeg(image))

        def decode():
            ds = data.load_image_folder(folder, args.size, batch_size=64, cache=False)
            for _ in ds:
                pass

        check = [timed(lambda: image_files.usable_files(paths)) for _ in range(args.runs)]
        decoding = [timed(decode) for _ in range(args.runs)]
    per_image = {
        name: {
            "wall_ms": round(statistics.median(t[0] for t in times) / args.count, 4),
            "cpu_ms": round(statistics.median(t[1] for t in times) / args.count, 4),
        }
        for name, times in (("check", check), ("check_and_decode", decoding))
    }
    print(json.dumps({"count": args.count, "size": args.size, "per_image": per_image,
                      "load_average": os.getloadavg()}))


if __name__ == "__main__":
    main()
