"""Image pipelines from folders of PNG/JPEG files."""

import os

import numpy as np
import tensorflow as tf

from keras_nvae.data import image_files
from keras_nvae.data.pipeline import AUTOTUNE
from keras_nvae.data.pipeline import _crop_and_resize
from keras_nvae.data.pipeline import _finish

# Decoded images up to this many bytes are cached in memory by default.
_CACHE_LIMIT_BYTES = 1 << 30

_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def _list_images(path):
    """Lists PNG/JPEG files under `path` recursively, in sorted order."""
    if not tf.io.gfile.isdir(path):
        raise FileNotFoundError(
            f"Image folder {path!r} does not exist or is not a folder."
        )
    files = []
    for root, _, names in tf.io.gfile.walk(path):
        files.extend(
            os.path.join(root, name)
            for name in names
            if name.lower().endswith(_IMAGE_EXTENSIONS)
        )
    if not files:
        raise FileNotFoundError(
            f"No PNG or JPEG images (extensions {', '.join(_IMAGE_EXTENSIONS)}) "
            f"were found under {path!r} or its subfolders."
        )
    return sorted(files)


def _image_file_decoder(image_size, channels, skip_bad_images=False):
    """Returns a function from a dataset of image file names to their images.

    A file that cannot be read or decoded stops the iteration with an
    `InvalidArgumentError` whose message names the file (`image_files.decode_error`
    turns it into a `BadImageFileError`) or, with `skip_bad_images`, is left
    out with a warning that names it and counts the files skipped. The check
    runs after the optional in-memory cache, so every pass over a cached
    dataset stops (or skips) at the same file.

    Args:
        image_size: side length of the output images.
        channels: 3 to decode as RGB, 1 as grayscale.
        skip_bad_images: leave out files that fail to decode.

    Returns:
        A function `(files, cache)` mapping a dataset of PNG/JPEG file names to
        one of the centre-cropped, resized `(image_size, image_size, channels)`
        images, cached in memory if `cache`.
    """
    skipped = image_files.SkippedImages()

    def decode(filename):
        image = tf.io.decode_image(
            tf.io.read_file(filename), channels=channels, expand_animations=False
        )
        image = _crop_and_resize(image, image_size)
        return tf.ensure_shape(image, [image_size, image_size, channels]), True, filename

    def undecodable(filename):
        return tf.zeros([image_size, image_size, channels], tf.uint8), False, filename

    def decode_or_flag(filename):
        # Decoding errors cannot be caught inside a graph; a one-file dataset
        # that ignores them falls through to `undecodable`.
        file = tf.data.Dataset.from_tensors(filename)
        decoded = file.map(decode).ignore_errors()
        return decoded.concatenate(file.map(undecodable)).take(1).get_single_element()

    def report(filename):
        if skip_bad_images:
            done = tf.py_function(lambda path: skipped.record(path.numpy()) or True, [filename], tf.bool)
        else:
            message = tf.strings.join(
                [image_files.CORRUPT_MARKER, filename, f" ({image_files.CORRUPT_PROBLEM})."]
            )
            done = tf.debugging.Assert(False, [message])
        with tf.control_dependencies([done]):
            return tf.constant(False)

    def checked(image, decoded, filename):
        return image, tf.cond(decoded, lambda: tf.constant(True), lambda: report(filename))

    def decode_files(files, cache=False):
        images = files.map(decode_or_flag, num_parallel_calls=AUTOTUNE)
        if cache:
            images = images.cache()
        images = images.map(checked)
        if skip_bad_images:
            images = images.filter(lambda image, decoded: decoded)
        return images.map(lambda image, decoded: image)

    return decode_files


def _checked_image_size(image_size, channels):
    """Returns `image_size` as an `int`, after checking it and `channels`.

    Raises:
        ValueError: `channels` is not 1 or 3, or `image_size` is not a
            positive integer.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3; got {channels!r}.")
    if not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer; got {image_size!r}.")
    return int(image_size)


def _decoded_images(
    files, image_size, channels, cache, shuffle, shuffle_buffer, seed, skip_bad_images
):
    """Decodes image files into a dataset of images, cached in memory or shuffled by name.

    Args:
        files: the image file paths.
        image_size, channels, cache, shuffle, shuffle_buffer, seed,
            skip_bad_images: as in `load_image_folder`.

    Returns:
        The dataset of single images, and the `shuffle` and `shuffle_buffer`
        that `_finish` still applies to it: the cached images are shuffled
        there; uncached, the file names are shuffled in full before decoding
        and `_finish` shuffles no more.
    """
    if cache is None:
        cache = len(files) * image_size * image_size * channels <= _CACHE_LIMIT_BYTES
    decode = _image_file_decoder(image_size, channels, skip_bad_images)
    ds = tf.data.Dataset.from_tensor_slices(files)
    if cache:
        return decode(ds, cache=True), shuffle, min(len(files), shuffle_buffer)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    return decode(ds), False, None


def load_image_folder(
    path, image_size, batch_size=64, shuffle=True, seed=None, flip=False, binarize=False,
    channels=3, drop_remainder=False, repeat=False, cache=None, shuffle_buffer=10_000,
    skip_bad_images=False,
):
    """Loads PNG/JPEG images from a folder (searched recursively).

    Each image is decoded with `tf.io`, centre-cropped to a square and resized
    to `image_size` x `image_size` (bilinear, antialiased). Empty, truncated
    and non-image files are found when the dataset is created
    (`keras_nvae.data.image_files` reads each file's first and last bytes).

    Args:
        path: folder containing the images (local or any `tf.io.gfile` path).
        image_size: side length of the square output images.
        batch_size: number of images per batch.
        shuffle: whether to shuffle, differently each epoch.
        seed: optional integer seed for shuffling and augmentation.
        flip: whether to flip each image left-right with probability 1/2.
        binarize: whether to dynamically binarise the images.
        channels: 3 to decode as RGB, 1 as grayscale.
        drop_remainder: whether to drop the last, smaller batch.
        repeat: whether to repeat the data indefinitely.
        cache: whether to cache the decoded images in memory. `None` caches
            when they take at most 1 GiB.
        shuffle_buffer: shuffle buffer size when the images are cached
            (otherwise the file list is shuffled in full).
        skip_bad_images: leave out bad files and files that fail to decode
            instead of raising (both named and counted in warnings).

    Returns:
        A `tf.data.Dataset` of `(batch, image_size, image_size, channels)`
        `uint8` batches (`float32` `{0, 1}` when `binarize`).

    Raises:
        FileNotFoundError: if the folder does not exist or has no images.
        BadImageFileError: naming empty, truncated or non-image files.
        tf.errors.InvalidArgumentError: while iterating, naming a file that
            passed the check but cannot be decoded (corrupt inside);
            `NVAE.fit` raises it as a `BadImageFileError`.

    Example:
    ```python
    ds = load_image_folder("/data/ffhq/thumbnails", image_size=64, batch_size=32)
    ```
    """
    image_size = _checked_image_size(image_size, channels)
    files = image_files.usable_files(_list_images(os.fspath(path)), skip_bad_images)
    ds, shuffle, buffer = _decoded_images(
        files, image_size, channels, cache, shuffle, shuffle_buffer, seed, skip_bad_images
    )
    return _finish(
        ds, batch_size=batch_size, shuffle=shuffle, shuffle_buffer=buffer, seed=seed,
        repeat=repeat, drop_remainder=drop_remainder, flip=flip, binarize=binarize,
    )


def _image_folder_split(source, split, image_size):
    """Returns the folder of `split` in an image folder source.

    Args:
        source: a folder of images, with or without split subfolders.
        split: the split to read; without split subfolders only `"train"`,
            which is then the whole folder.
        image_size: the output side length; folders need one.

    Returns:
        The subfolder named after `split`, or `source` itself for `"train"`.

    Raises:
        ValueError: the split subfolder is missing, or `image_size` is `None`.
    """
    folder = os.path.join(source, split)
    if not tf.io.gfile.isdir(folder):
        if split != "train":
            raise ValueError(
                f"Folder {source!r} has no {split!r} subfolder; without "
                'split subfolders the whole folder is the "train" split. '
                f"Put the {split!r} images in {folder!r}."
            )
        folder = source
    if image_size is None:
        raise ValueError(
            "image_size is required for image folders (images are "
            "centre-cropped and resized to image_size x image_size)."
        )
    return folder
