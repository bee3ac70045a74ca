"""Image pipelines from in-memory arrays, `.npy`/`.npz` files and scikit-learn's digits."""

import os

import numpy as np
import tensorflow as tf

from keras_nvae.data.pipeline import _finish

ARRAY_EXTENSIONS = (".npy", ".npz")


def _validate_images(images):
    """Checks an NHWC image array and returns it as `uint8` or `float32`."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., np.newaxis]
    if images.ndim != 4:
        raise ValueError(
            "Expected images of shape (N, H, W, C) (or (N, H, W) for "
            f"grayscale); got an array of shape {images.shape}. Stack your "
            "images along a leading batch axis."
        )
    if images.shape[-1] not in (1, 3):
        hint = ""
        if images.shape[1] in (1, 3):
            hint = (
                " The array looks channels-first (NCHW); convert it with "
                "np.transpose(images, (0, 2, 3, 1))."
            )
        raise ValueError(
            "Expected NHWC images with 1 (grayscale) or 3 (RGB) channels in "
            f"the last axis; got shape {images.shape}.{hint}"
        )
    if images.shape[0] == 0:
        raise ValueError(f"Expected at least one image; got shape {images.shape}.")
    if images.dtype == np.uint8:
        return images
    if np.issubdtype(images.dtype, np.floating):
        low, high = float(np.min(images)), float(np.max(images))
        if not (np.isfinite(low) and np.isfinite(high) and low >= 0.0 and high <= 1.0):
            hint = (
                " If the values are in [0, 255], divide by 255 or convert "
                "them to uint8."
                if np.isfinite(high) and high <= 255.0 and low >= 0.0
                else ""
            )
            raise ValueError(
                "Floating-point images must have finite values in [0, 1]; got "
                f"values in [{low}, {high}].{hint}"
            )
        return images.astype(np.float32, copy=False)
    raise ValueError(
        "Images must be uint8 in [0, 255] or floating-point in [0, 1]; got "
        f"dtype {images.dtype}. If the values are in [0, 255] use "
        "images.astype(np.uint8); if they are in [0, 1] use "
        "images.astype(np.float32)."
    )


def from_numpy(
    images,
    batch_size,
    shuffle=True,
    seed=None,
    flip=False,
    binarize=False,
    drop_remainder=False,
    repeat=False,
):
    """Builds a batched image pipeline from an in-memory array.

    Args:
        images: array of shape `(N, H, W, C)` with 1 or 3 channels, or
            `(N, H, W)` for grayscale. Either `uint8` in `[0, 255]` or
            floating point in `[0, 1]`.
        batch_size: number of images per batch.
        shuffle: whether to shuffle all images, differently each epoch.
        seed: optional integer seed for shuffling and augmentation.
        flip: whether to flip each image left-right with probability 1/2.
        binarize: whether to dynamically binarise (see `dynamic_binarize`).
        drop_remainder: whether to drop the last, smaller batch.
        repeat: whether to repeat the data indefinitely.

    Returns:
        A `tf.data.Dataset` of NHWC batches: `float32` `{0, 1}` when
        `binarize`, otherwise the input dtype (`uint8`, or `float32` for
        floating inputs).

    Raises:
        ValueError: if the shape, dtype or value range is not supported.

    Example:

    >>> x = np.zeros((10, 28, 28), dtype=np.uint8)
    >>> ds = from_numpy(x, batch_size=4, binarize=True)
    >>> next(iter(ds)).shape
    TensorShape([4, 28, 28, 1])
    """
    images = tf.constant(_validate_images(images))
    num_images = int(images.shape[0])
    return _finish(
        tf.data.Dataset.range(num_images),
        batch_size=batch_size,
        shuffle=shuffle,
        shuffle_buffer=num_images,
        seed=seed,
        repeat=repeat,
        drop_remainder=drop_remainder,
        flip=flip,
        binarize=binarize,
        gather=lambda indices: tf.gather(images, indices),
    )


def digits_arrays(split="train", test_fraction=0.2, split_seed=0):
    """Returns scikit-learn's 8x8 digits as `uint8` images.

    The 0..16 intensities are scaled to 0..255 with `round(v * 255 / 16)`.
    The train/test split is a deterministic, seeded permutation of the 1,797
    images; the two splits are disjoint and together cover all images. The
    default `split_seed` gives the split every trainer and evaluator uses.

    Args:
        split: `"train"` or `"test"`.
        test_fraction: fraction of images in the test split, in `(0, 1)`.
        split_seed: seed of the split permutation.

    Returns:
        A `uint8` array of shape `(N, 8, 8, 1)`.

    Example:

    >>> digits_arrays("test").shape
    (359, 8, 8, 1)
    """
    if split not in ("train", "test"):
        raise ValueError(f'split must be "train" or "test"; got {split!r}.')
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1); got {test_fraction!r}.")
    from sklearn.datasets import load_digits as sklearn_load_digits

    values = sklearn_load_digits().images  # (1797, 8, 8), floats in 0..16
    images = np.round(values * (255.0 / 16.0)).astype(np.uint8)[..., np.newaxis]
    order = np.random.default_rng(split_seed).permutation(len(images))
    num_test = int(round(len(images) * test_fraction))
    indices = order[:num_test] if split == "test" else order[num_test:]
    return images[np.sort(indices)]


def load_digits(
    split="train",
    batch_size=64,
    test_fraction=0.2,
    seed=None,
    shuffle=True,
    repeat=False,
    binarize=False,
    drop_remainder=False,
    split_seed=0,
):
    """Loads scikit-learn's 8x8 digits as a batched `uint8` pipeline.

    Small enough for quick experiments and tests; needs no download.

    Args:
        split: `"train"` or `"test"`.
        batch_size: number of images per batch.
        test_fraction: fraction of images in the test split.
        seed: optional seed of the shuffling (and binarisation); it does not
            move the train/test split.
        shuffle: whether to shuffle, differently each epoch.
        repeat: whether to repeat the data indefinitely.
        binarize: whether to dynamically binarise the images.
        drop_remainder: whether to drop the last, smaller batch.
        split_seed: seed of the train/test split (see `digits_arrays`).

    Returns:
        A `tf.data.Dataset` of `(batch, 8, 8, 1)` batches, `uint8` (or
        `float32` `{0, 1}` when `binarize`).

    Example:

    >>> ds = load_digits("train", batch_size=16)
    >>> next(iter(ds)).shape
    TensorShape([16, 8, 8, 1])
    """
    return from_numpy(
        digits_arrays(split, test_fraction=test_fraction, split_seed=split_seed),
        batch_size,
        shuffle=shuffle,
        seed=seed,
        binarize=binarize,
        drop_remainder=drop_remainder,
        repeat=repeat,
    )


def _load_array_file(path, split):
    """Reads the images of `split` from a `.npy` or `.npz` file.

    Returns:
        (the array's name in the file, the array).
    """
    if path.endswith(".npy"):
        arrays = {"images": np.load(path, allow_pickle=False)}
    else:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    if split in arrays:
        return split, arrays[split]
    if len(arrays) == 1 and split == "train":
        return next(iter(arrays.items()))
    if len(arrays) == 1:
        raise ValueError(
            f"{path!r} holds a single image array, which is used as the "
            f'"train" split only; got split {split!r}. Save the {split!r} '
            "images as their own file, or as an array named "
            f"{split!r} in a .npz file."
        )
    raise ValueError(
        f"{path!r} has no array named {split!r}; it holds "
        f"{', '.join(sorted(arrays))}. Name the arrays after their splits, "
        'e.g. np.savez(path, train=x_train, test=x_test).'
    )


def _check_image_size(images, image_size, source):
    """Raises if fixed-size images do not match the requested `image_size`."""
    height, width = np.shape(images)[1:3]
    if image_size is not None and (height, width) != (image_size, image_size):
        raise ValueError(
            f"image_size={image_size} was requested, but {source} holds "
            f"{height}x{width} images and array sources are not resized. "
            "Resize the array beforehand or pass image_size=None."
        )


def _array_source_images(source, split, image_size):
    """Returns the images of `split` of `"digits"` or of a `.npy`/`.npz` file.

    Args:
        source: `"digits"` or the path of a `.npy` or `.npz` file.
        split: the split to read.
        image_size: `None`, or the side length the images must have.

    Returns:
        The images as an array.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the split is missing, or the images have another size or
            an unsupported dtype or shape (naming the file and the array).
    """
    if source == "digits":
        images = digits_arrays(split)
        _check_image_size(images, image_size, "'digits'")
        return images
    if not os.path.isfile(source):
        raise FileNotFoundError(f"Image array file {source!r} does not exist.")
    name, images = _load_array_file(source, split)
    try:
        checked = _validate_images(images)
    except ValueError as error:
        raise ValueError(
            f"The array {name!r} in {source!r} (dtype {images.dtype}, shape "
            f"{images.shape}) cannot be used as images: {error}"
        ) from None
    _check_image_size(checked, image_size, repr(source))
    return checked
