"""Image pipelines from TensorFlow Datasets, with the official NVAE transforms."""

import dataclasses
import textwrap

import tensorflow as tf

from keras_nvae.errors import first_line
from keras_nvae.data.pipeline import AUTOTUNE
from keras_nvae.data.pipeline import _crop_and_resize
from keras_nvae.data.pipeline import _finish
from keras_nvae.data import registry


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
        """The defaults of a `keras_nvae.data.registry.DatasetSpec`."""
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
    for spec in registry.specs()
    if spec.tfds_name is not None
}

_TFDS_ALIASES = {
    name: spec.tfds_name
    for spec in registry.specs()
    if spec.tfds_name is not None
    for name in spec.names
    if name != spec.tfds_name
}


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
            f"Downloading and preparing it failed ({first_line(exc)}).",
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
            f"Cannot read split {split!r} of {name!r} ({first_line(exc)}). "
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
    name, split="train", batch_size=64, data_dir=None, shuffle=True, flip=None, binarize=None,
    download=False, seed=None, image_size=None, drop_remainder=False, repeat=False, cache=None,
    shuffle_buffer=10_000, manual_dir=None,
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
    tfds_name, preset = _resolved_name(name)
    builder = _image_builder(tfds_name, data_dir, download, manual_dir)
    ds = _tfds_images(builder, tfds_name, split, preset, image_size, cache, shuffle, seed)
    return _finish(
        ds, batch_size=batch_size, shuffle=shuffle, shuffle_buffer=shuffle_buffer, seed=seed,
        repeat=repeat, drop_remainder=drop_remainder,
        flip=preset.flip and split.startswith("train") if flip is None else flip,
        binarize=preset.binarize if binarize is None else binarize,
    )


def _resolved_name(name):
    """The TensorFlow Datasets name behind a TFDS or registry name, and its preset.

    A dataset without a preset gets the default `_TfdsPreset` (no augmentation,
    stored size, not cached).
    """
    tfds_name = _TFDS_ALIASES.get(name, name)
    return tfds_name, _TFDS_PRESETS.get(tfds_name, _TfdsPreset())


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
