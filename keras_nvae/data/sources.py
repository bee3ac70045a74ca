"""`make_dataset`: the image pipeline of any data source NVAE reads.

Example:

```python
from keras_nvae import data

train = data.make_dataset("digits", "train", batch_size=32)
test = data.make_dataset("digits", "test", batch_size=32)
images = next(iter(train))  # uint8, shape (32, 8, 8, 1)
```
"""

import os

import tensorflow as tf

from keras_nvae.data.arrays import ARRAY_EXTENSIONS
from keras_nvae.data.arrays import _array_source_images
from keras_nvae.data.arrays import from_numpy
from keras_nvae.data.folders import _image_folder_split
from keras_nvae.data.folders import load_image_folder
from keras_nvae.data.tfds import _load_tfds_source


def make_dataset(
    source, split="train", batch_size=64, data_dir=None, shuffle=None, flip=None, binarize=None,
    seed=None, image_size=None, drop_remainder=False, repeat=False, download=False,
    skip_bad_images=False,
):
    """Builds the image pipeline for any supported data source.

    Sources:

    * `"digits"`: scikit-learn's 8x8 digits (see `load_digits`).
    * a path to a `.npy` file (one image array, used as the `"train"` split)
      or `.npz` file (arrays named after their splits, or a single array for
      `"train"`); see `from_numpy`.
    * a path to a folder of PNG/JPEG images (see `load_image_folder`). If it
      has a subfolder named after `split`, that subfolder is used; otherwise
      the whole folder is the `"train"` split.
    * a TensorFlow Datasets name such as `"mnist"`, `"cifar10"`, `"celeb_a"`
      or `"imagenet32"` (see `load_tfds`).

    Args:
        source: one of the sources above.
        split: `"train"`, `"test"` (or any split the source has).
        batch_size: number of images per batch.
        data_dir: TensorFlow Datasets data directory (TFDS sources only).
        shuffle: whether to shuffle; `None` shuffles training splits only.
        flip: random horizontal flips; `None` uses the TFDS preset, and no
            flips for other sources.
        binarize: dynamic binarisation; `None` uses the TFDS preset, and no
            binarisation for other sources.
        seed: optional integer seed of shuffling and augmentation (the
            `"digits"` train/test split is fixed; see `digits_arrays`).
        image_size: output side length. Required for image folders; for
            arrays and digits it must match the stored size if given.
        drop_remainder: whether to drop the last, smaller batch.
        repeat: whether to repeat the data indefinitely.
        download: whether TFDS datasets may be downloaded.
        skip_bad_images: image folders only; see `load_image_folder`.

    Returns:
        A `tf.data.Dataset` of NHWC image batches.

    Raises:
        ValueError: for an unknown source or split, or array images of an
            unsupported dtype or layout (naming the file and the array).
        BadImageFileError: for bad files in an image folder.
        FileNotFoundError: for a missing file or an empty folder.
        DatasetNotAvailableError: for a TFDS dataset that is not prepared.

    Example:

    ```python
    train = make_dataset("mnist", "train", batch_size=32, data_dir="/data/tfds")
    test = make_dataset("/data/faces", "test", batch_size=32, image_size=64)
    ```
    """
    source = os.fspath(source)
    options = _pipeline_options(
        split, batch_size, shuffle, flip, binarize, seed, drop_remainder, repeat
    )
    if source == "digits" or source.lower().endswith(ARRAY_EXTENSIONS):
        return from_numpy(_array_source_images(source, split, image_size), **options)
    if tf.io.gfile.isdir(source):
        folder = _image_folder_split(source, split, image_size)
        return load_image_folder(folder, image_size, skip_bad_images=skip_bad_images, **options)
    return _load_tfds_source(source, split, data_dir, download, image_size, options)


def _pipeline_options(split, batch_size, shuffle, flip, binarize, seed, drop_remainder, repeat):
    """The arguments of `make_dataset` that every kind of source takes, by name.

    Args:
        split, batch_size, flip, binarize, seed, drop_remainder, repeat: as
            in `make_dataset`.
        shuffle: as in `make_dataset`; `None` becomes whether `split` is a
            training split.

    Returns:
        A dict of keyword arguments for `from_numpy`, `load_image_folder` and
        `load_tfds`.
    """
    return dict(
        batch_size=batch_size,
        shuffle=split.startswith("train") if shuffle is None else shuffle,
        flip=flip,
        binarize=binarize,
        seed=seed,
        drop_remainder=drop_remainder,
        repeat=repeat,
    )
