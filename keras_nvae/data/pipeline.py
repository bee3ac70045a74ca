"""`tf.data` input pipelines for NVAE.

Every pipeline in this module yields batches of NHWC images and nothing else
(no labels). Batches are either `uint8` in `[0, 255]` or, for binarised data
and floating-point inputs, `float32` in `[0, 1]`. Bit reduction and the
MNIST 28 -> 32 padding are done by the model, so the pipelines only decode,
crop/resize, augment (random horizontal flip) and binarise.

Randomness (shuffling, flips, dynamic binarisation) is deterministic for a
given `seed` and changes from one epoch (iteration over the dataset) to the
next, so Bernoulli samples and flips are redrawn every epoch.

Example:

```python
from keras_nvae import data

train = data.make_dataset("digits", "train", batch_size=32)
test = data.make_dataset("digits", "test", batch_size=32)
images = next(iter(train))  # uint8, shape (32, 8, 8, 1)
```
"""

import dataclasses
import os
import textwrap

import numpy as np
import tensorflow as tf

from keras_nvae.data import image_files
from keras_nvae.data import registry as datasets

AUTOTUNE = tf.data.AUTOTUNE

# Decoded images up to this many bytes are cached in memory by default.
_CACHE_LIMIT_BYTES = 1 << 30

_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_ARRAY_EXTENSIONS = (".npy", ".npz")


class DatasetNotAvailableError(FileNotFoundError):
    """A TensorFlow Datasets dataset is not prepared and cannot be built.

    Raised by `load_tfds` (and `make_dataset`) when the dataset has not been
    downloaded and prepared in the searched data directory and downloading is
    disabled or failed (for example on a machine without internet access).

    Attributes:
        name: the TensorFlow Datasets name, e.g. `"cifar10"`.
        data_dir: the data directory that was searched.
    """

    def __init__(self, message, name, data_dir):
        super().__init__(message)
        self.name = name
        self.data_dir = data_dir


class _UnknownDatasetError(ValueError):
    """TensorFlow Datasets has no builder with the requested name."""


@dataclasses.dataclass(frozen=True)
class _TfdsPreset:
    """Per-dataset defaults for `load_tfds`.

    Attributes:
        binarize: default for dynamic binarisation (all splits).
        flip: default for random horizontal flips on training splits.
        already_binary: images are stored as `{0, 1}` `uint8` and are
            returned as `float32` `{0, 1}`.
        crop_box: PIL-style `(left, top, right, bottom)` crop applied before
            resizing.
        image_size: default output size; `None` keeps the stored size.
        cache: whether the decoded split is small enough to cache in memory.
        split_aliases: maps NVAE split names to TensorFlow Datasets splits.
    """

    binarize: bool = False
    flip: bool = False
    already_binary: bool = False
    crop_box: tuple = None
    image_size: int = None
    cache: bool = False
    split_aliases: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_spec(cls, spec):
        """The defaults of a `keras_nvae.datasets.DatasetSpec`."""
        return cls(
            binarize=spec.binarization == "dynamic",
            flip=spec.flip,
            already_binary=spec.binarization == "stored",
            crop_box=spec.crop_box,
            image_size=spec.image_size if spec.crop_box is not None else None,
            cache=spec.cache,
            split_aliases=dict(spec.tfds_splits),
        )


# The registry's datasets that are read from TensorFlow Datasets, by TFDS name,
# and their other names.
_TFDS_PRESETS = {
    spec.tfds_name: _TfdsPreset.from_spec(spec)
    for spec in datasets.specs()
    if spec.tfds_name is not None
}

_TFDS_ALIASES = {
    name: spec.tfds_name
    for spec in datasets.specs()
    if spec.tfds_name is not None
    for name in spec.names
    if name != spec.tfds_name
}


# ---------------------------------------------------------------------------
# Augmentation.
# ---------------------------------------------------------------------------


def dynamic_binarize(images, seed=None):
    """Samples binary images with `P(pixel = 1)` equal to its intensity.

    This is the dynamic binarisation used for MNIST by NVAE: a fresh
    Bernoulli sample is drawn every time the function runs (every epoch when
    used inside a `tf.data` pipeline).

    Args:
        images: `uint8` tensor in `[0, 255]` or floating tensor in `[0, 1]`.
        seed: optional stateless seed, a shape `[2]` integer tensor. With a
            seed the sample is a deterministic function of `(images, seed)`;
            without one `tf.random.uniform` is used.

    Returns:
        A `float32` tensor of the same shape containing only 0 and 1.

    Example:

    >>> x = tf.constant([[0, 255]], dtype=tf.uint8)
    >>> dynamic_binarize(x, seed=[1, 2]).numpy()
    array([[0., 1.]], dtype=float32)
    """
    images = tf.convert_to_tensor(images)
    if images.dtype == tf.uint8:
        probs = tf.cast(images, tf.float32) / 255.0
    elif images.dtype.is_floating:
        probs = tf.cast(images, tf.float32)
    else:
        raise ValueError(
            "dynamic_binarize expects uint8 images in [0, 255] or floating "
            f"images in [0, 1]; got dtype {images.dtype.name}."
        )
    if seed is None:
        noise = tf.random.uniform(tf.shape(probs))
    else:
        noise = tf.random.stateless_uniform(tf.shape(probs), seed=seed)
    return tf.cast(noise < probs, tf.float32)


def _random_flip(images, seed):
    """Flips each NHWC image left-right with probability 1/2."""
    batch = tf.shape(images)[0]
    flip = tf.random.stateless_uniform([batch], seed=seed) < 0.5
    return tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)


def _finish(
    ds,
    *,
    batch_size,
    shuffle,
    shuffle_buffer,
    seed,
    repeat,
    drop_remainder,
    flip,
    binarize,
    gather=None,
):
    """Shuffles, repeats, batches, augments and prefetches a dataset.

    Args:
        ds: dataset of single elements (images, or indices with `gather`).
        gather: optional function mapping a batch of elements to a batch of
            NHWC images.

    Returns:
        A dataset of NHWC image batches.
    """
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(
        int(batch_size), drop_remainder=drop_remainder, num_parallel_calls=AUTOTUNE
    )
    if gather is not None:
        ds = ds.map(gather, num_parallel_calls=AUTOTUNE)
    if flip or binarize:
        # One int64 per batch, redrawn each epoch, seeds the stateless ops so
        # that augmentation is reproducible for a fixed `seed`.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

        def augment(batch_seed, images):
            if flip:
                images = _random_flip(images, tf.stack([batch_seed, 0]))
            if binarize:
                images = dynamic_binarize(images, tf.stack([batch_seed, 1]))
            return images

        ds = tf.data.Dataset.zip(seeds, ds).map(augment, num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def _crop_and_resize(image, image_size, crop_box=None):
    """Crops a `uint8` HWC image (box, else centred square) and resizes it.

    Resizing is bilinear with antialiasing, which matches PIL's resize used by
    the official NVAE transforms.
    """
    if crop_box is not None:
        left, top, right, bottom = crop_box
        image = image[top:bottom, left:right, :]
    else:
        shape = tf.shape(image)
        height, width = shape[0], shape[1]
        side = tf.minimum(height, width)
        image = tf.image.crop_to_bounding_box(
            image, (height - side) // 2, (width - side) // 2, side, side
        )
    image = tf.image.resize(
        image, [image_size, image_size], method="bilinear", antialias=True
    )
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


# ---------------------------------------------------------------------------
# In-memory arrays.
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# Folders of image files.
# ---------------------------------------------------------------------------


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
    `InvalidArgumentError` whose message names the file or, with
    `skip_bad_images`, is left out (`tf.data` logs a warning).

    Args:
        image_size: side length of the output images.
        channels: 3 to decode as RGB, 1 as grayscale.
        skip_bad_images: leave out files that fail to decode.

    Returns:
        A function mapping a dataset of PNG/JPEG file names to one of the
        centre-cropped, resized `(image_size, image_size, channels)` images.
    """

    def decode(filename):
        image = tf.io.decode_image(
            tf.io.read_file(filename), channels=channels, expand_animations=False
        )
        image = _crop_and_resize(image, image_size)
        return tf.ensure_shape(image, [image_size, image_size, channels])

    def unreadable(filename):
        message = tf.strings.join(
            [
                "keras_nvae cannot decode the image file ",
                filename,
                " (truncated, empty, or not a PNG or JPEG). Remove or replace it.",
            ]
        )
        with tf.control_dependencies([tf.debugging.Assert(False, [message])]):
            return tf.zeros([image_size, image_size, channels], tf.uint8)

    def decode_or_fail(filename):
        # Decoding errors cannot be caught inside a graph; a one-file dataset
        # that ignores them falls through to `unreadable`, which names the file.
        file = tf.data.Dataset.from_tensors(filename)
        decoded = file.map(decode).ignore_errors()
        return decoded.concatenate(file.map(unreadable)).take(1).get_single_element()

    def decode_files(files):
        if skip_bad_images:
            return files.map(decode, num_parallel_calls=AUTOTUNE).ignore_errors(log_warning=True)
        return files.map(decode_or_fail, num_parallel_calls=AUTOTUNE)

    return decode_files


def load_image_folder(
    path,
    image_size,
    batch_size=64,
    shuffle=True,
    seed=None,
    flip=False,
    binarize=False,
    channels=3,
    drop_remainder=False,
    repeat=False,
    cache=None,
    shuffle_buffer=10_000,
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
        skip_bad_images: leave out bad files (named in a warning) and files
            that fail to decode (logged by `tf.data`) instead of raising.

    Returns:
        A `tf.data.Dataset` of `(batch, image_size, image_size, channels)`
        `uint8` batches (`float32` `{0, 1}` when `binarize`).

    Raises:
        FileNotFoundError: if the folder does not exist or has no images.
        BadImageFileError: naming empty, truncated or non-image files.
        tf.errors.InvalidArgumentError: while iterating, naming a file that
            passed the check but cannot be decoded (corrupt inside).

    Example:
    ```python
    ds = load_image_folder("/data/ffhq/thumbnails", image_size=64, batch_size=32)
    ```
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3; got {channels!r}.")
    if not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer; got {image_size!r}.")
    image_size = int(image_size)
    files = image_files.usable_files(_list_images(os.fspath(path)), skip_bad_images)
    if cache is None:
        cache = len(files) * image_size * image_size * channels <= _CACHE_LIMIT_BYTES
    decode = _image_file_decoder(image_size, channels, skip_bad_images)
    ds = tf.data.Dataset.from_tensor_slices(files)
    if cache:
        ds = decode(ds).cache()
        buffer = min(len(files), shuffle_buffer)
    else:
        # Shuffle the (cheap) file names in full, then decode.
        if shuffle:
            ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        ds = decode(ds)
        shuffle, buffer = False, None
    return _finish(
        ds, batch_size=batch_size, shuffle=shuffle, shuffle_buffer=buffer, seed=seed,
        repeat=repeat, drop_remainder=drop_remainder, flip=flip, binarize=binarize,
    )


# ---------------------------------------------------------------------------
# TensorFlow Datasets.
# ---------------------------------------------------------------------------


def _first_line(exc, limit=300):
    """One-line summary of an exception for error messages."""
    text = str(exc).strip().splitlines()
    text = text[0] if text else ""
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"{type(exc).__name__}: {text}"


def _not_available(builder, name, data_dir, reason, manual_dir=None):
    """Builds the `DatasetNotAvailableError` for an unprepared dataset."""
    searched = str(builder.data_dir_root)
    where = (
        f"{searched!r}"
        if data_dir is not None
        else f"{searched!r} (the default; set data_dir= or TFDS_DATA_DIR to change it)"
    )
    lines = [
        f"TensorFlow Datasets dataset {name!r} is not prepared in data_dir {where}.",
        reason,
        "To prepare it:",
        f"  * on a machine with internet access run `tfds build {name} "
        f"--data_dir {searched}` (or pass download=True), or",
        "  * copy a prepared copy of the dataset so that "
        f"{builder.data_dir} exists.",
    ]
    instructions = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
    if instructions:
        lines.append(
            "This dataset needs a manual download first; pass the folder as "
            f"manual_dir= (or `tfds build {name} --manual_dir DIR`)"
            + (f" (given: {manual_dir!r})" if manual_dir else "")
            + ". Instructions from TensorFlow Datasets:\n"
            + textwrap.dedent(instructions).strip()
        )
    return DatasetNotAvailableError("\n".join(lines), name=name, data_dir=searched)


def _tfds_builder(name, data_dir, download, manual_dir):
    """Returns a prepared `tfds` builder or raises a clear error."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except ValueError:  # Includes tfds' DatasetNotFoundError.
        raise _UnknownDatasetError(
            f"TensorFlow Datasets has no dataset named {name!r}. Presets of "
            f"this library: {', '.join(sorted(_TFDS_PRESETS))} (aliases: "
            f"{', '.join(sorted(_TFDS_ALIASES))}); any other image dataset of "
            "https://www.tensorflow.org/datasets/catalog also works."
        ) from None
    if builder.is_prepared():
        return builder
    if not download:
        reason = "Downloading is disabled (download=False)."
        raise _not_available(builder, name, data_dir, reason, manual_dir)
    config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    try:
        builder.download_and_prepare(download_config=config)
    except Exception as exc:  # Network, checksum, manual-download errors...
        raise _not_available(
            builder,
            name,
            data_dir,
            f"Downloading and preparing it failed ({_first_line(exc)}).",
            manual_dir,
        ) from None
    return builder


def _image_builder(name, data_dir, download, manual_dir):
    """Returns the prepared `tfds` builder of an image dataset.

    Args:
        name: TensorFlow Datasets name.
        data_dir, download, manual_dir: as in `load_tfds`.

    Returns:
        A prepared `tfds` builder whose features include `"image"`.

    Raises:
        ValueError: the dataset has no `"image"` feature.
    """
    builder = _tfds_builder(name, data_dir, download, manual_dir)
    if "image" not in builder.info.features:
        raise ValueError(
            f"Dataset {name!r} has no 'image' feature (features: "
            f"{', '.join(builder.info.features)}); it cannot be used as an "
            "image dataset."
        )
    return builder


def _tfds_images(builder, name, split, preset, image_size, cache, shuffle, seed):
    """Reads one split of a prepared dataset as single images, as its preset says.

    Args:
        builder: the prepared `tfds` builder.
        name: its TensorFlow Datasets name (for error messages).
        split: split name or TFDS split expression; the preset may map it.
        preset: the dataset's `_TfdsPreset`.
        image_size, cache, shuffle, seed: as in `load_tfds`.

    Returns:
        A `tf.data.Dataset` of HWC images, cropped and resized when an image
        size is set (by `image_size` or the preset).

    Raises:
        ValueError: the split cannot be read.
    """
    import tensorflow_datasets as tfds

    image_size = preset.image_size if image_size is None else image_size
    try:
        ds = builder.as_dataset(
            split=preset.split_aliases.get(split, split),
            shuffle_files=shuffle,
            read_config=tfds.ReadConfig(shuffle_seed=seed),
        )
    except (ValueError, KeyError) as exc:
        raise ValueError(
            f"Cannot read split {split!r} of {name!r} ({_first_line(exc)}). "
            f"Available splits: {', '.join(builder.info.splits) or 'unknown'}."
        ) from None

    def preprocess(example):
        image = example["image"]
        if image_size is not None:
            image = _crop_and_resize(image, image_size, preset.crop_box)
        if preset.already_binary:
            image = tf.cast(image, tf.float32)
        return image

    ds = ds.map(preprocess, num_parallel_calls=AUTOTUNE)
    if preset.cache if cache is None else cache:
        ds = ds.cache()
    return ds


def load_tfds(
    name,
    split="train",
    batch_size=64,
    data_dir=None,
    shuffle=True,
    flip=None,
    binarize=None,
    download=False,
    seed=None,
    image_size=None,
    drop_remainder=False,
    repeat=False,
    cache=None,
    shuffle_buffer=10_000,
    manual_dir=None,
):
    """Loads an image dataset from TensorFlow Datasets.

    Datasets of the `keras_nvae.datasets` registry, by TFDS or registry name
    (`"celeba64"`, `"imagenet32"`, ...), are read as NVAE reads them: `"mnist"`
    binarised dynamically, `"binarized_mnist"` as `float32`, `"celeb_a"`
    cropped to NVAE's box and resized to 64x64, RGB training splits flipped,
    ImageNet 32's validation split as `"test"`, and the manual download
    `"celeb_a_hq/256"` split into its first 27,000 and last 3,000 images.
    Other TFDS datasets with an `"image"` feature work too, unaugmented.

    Args:
        name: TFDS name (optionally with config/version) or a registry name.
        split: split name or TFDS split expression such as `"train[:90%]"`.
        batch_size: number of images per batch.
        data_dir: TensorFlow Datasets data directory. `None` uses the TFDS
            default (`TFDS_DATA_DIR` or `~/tensorflow_datasets`).
        shuffle: whether to shuffle, differently each epoch.
        flip: random horizontal flips; `None` uses the preset on training splits.
        binarize: dynamic binarisation; `None` uses the preset.
        download: whether to download and prepare the dataset when missing.
        seed: optional integer seed for file order, shuffling and augmentation.
        image_size: output side length; `None` uses the preset (64 for
            CelebA, the stored size otherwise). Non-CelebA images are
            centre-cropped to a square before resizing.
        drop_remainder: whether to drop the last, smaller batch.
        repeat: whether to repeat the data indefinitely.
        cache: whether to cache decoded images in memory; `None` uses the
            preset (only for the small MNIST and CIFAR-10 datasets).
        shuffle_buffer: size of the shuffle buffer.
        manual_dir: folder of manually downloaded files (`celeb_a_hq`).

    Returns:
        A `tf.data.Dataset` of NHWC batches, `uint8` or `float32` `{0, 1}`
        for binarised data.

    Raises:
        DatasetNotAvailableError: the dataset is missing and cannot be downloaded.
        ValueError: for unknown dataset names or splits.

    Example:

    ```python
    train = load_tfds("cifar10", "train", batch_size=32, data_dir="/data/tfds")
    ```
    """
    tfds_name = _TFDS_ALIASES.get(name, name)
    preset = _TFDS_PRESETS.get(tfds_name, _TfdsPreset())
    builder = _image_builder(tfds_name, data_dir, download, manual_dir)
    is_train = split.startswith("train")
    ds = _tfds_images(
        builder, tfds_name, split, preset, image_size, cache, shuffle, seed
    )
    return _finish(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        shuffle_buffer=shuffle_buffer,
        seed=seed,
        repeat=repeat,
        drop_remainder=drop_remainder,
        flip=preset.flip and is_train if flip is None else flip,
        binarize=preset.binarize if binarize is None else binarize,
    )


# ---------------------------------------------------------------------------
# Single entry point.
# ---------------------------------------------------------------------------


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


def _load_tfds_source(source, split, data_dir, download, image_size, options):
    """`load_tfds` for `make_dataset`, naming every kind of source if unknown.

    Args:
        source: the TensorFlow Datasets name.
        split, data_dir, download, image_size: as in `load_tfds`.
        options: the other `load_tfds` arguments, by name.

    Returns:
        The `load_tfds` dataset.

    Raises:
        ValueError: `source` is not a TensorFlow Datasets name.
    """
    try:
        return load_tfds(
            source,
            split,
            data_dir=data_dir,
            download=download,
            image_size=image_size,
            **options,
        )
    except _UnknownDatasetError:
        raise ValueError(
            f"Unknown data source {source!r}: it is not 'digits', not an "
            "existing folder or .npy/.npz file, and not a TensorFlow Datasets "
            "name. Options: 'digits'; a folder of PNG/JPEG images; a .npy or "
            ".npz file of images; a TensorFlow Datasets name such as "
            f"{', '.join(sorted(set(_TFDS_PRESETS) | set(_TFDS_ALIASES)))}."
        ) from None


def make_dataset(
    source,
    split="train",
    batch_size=64,
    data_dir=None,
    shuffle=None,
    flip=None,
    binarize=None,
    seed=None,
    image_size=None,
    drop_remainder=False,
    repeat=False,
    download=False,
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
    if shuffle is None:
        shuffle = split.startswith("train")
    options = dict(
        batch_size=batch_size, shuffle=shuffle, flip=flip, binarize=binarize, seed=seed,
        drop_remainder=drop_remainder, repeat=repeat,
    )
    if source == "digits" or source.lower().endswith(_ARRAY_EXTENSIONS):
        return from_numpy(_array_source_images(source, split, image_size), **options)
    if tf.io.gfile.isdir(source):
        folder = _image_folder_split(source, split, image_size)
        return load_image_folder(folder, image_size, skip_bad_images=skip_bad_images, **options)
    return _load_tfds_source(source, split, data_dir, download, image_size, options)
