"""The registry of dataset facts shared by presets, the converter and the pipelines.

Each dataset NVAE is trained on has one `DatasetSpec`: the image geometry and
likelihood the model uses, the bit depth of the paper's model, where TensorFlow
Datasets stores it, how the official code crops, augments and splits it, and
every name it goes by (the library's, the official train.py `--dataset` value
and the TensorFlow Datasets name). `get` finds a dataset by any of them.

Example:

>>> from keras_nvae import datasets
>>> spec = datasets.get("celeba_64")  # official name, TFDS "celeb_a" or "celeba64"
>>> spec.name, spec.image_shape, spec.likelihood
('celeba64', (64, 64, 3), 'dmol')
>>> datasets.get("celeb_a_hq/256").num_x_bits
5
"""

import dataclasses

from keras_nvae.config import LIKELIHOODS

BINARIZATIONS = ("dynamic", "stored")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """The facts about one dataset.

    Attributes:
        name: the library's canonical name, e.g. `"celeba64"`.
        image_size: side length of the square images the model sees (before
            `pad_to`).
        channels: 1 (grayscale) or 3 (RGB).
        likelihood: the decoder likelihood, one of `config.LIKELIHOODS`.
        num_x_bits: bit depth of the paper's model on this dataset.
        pad_to: square size the model zero-pads the images to, or `None`.
        official_name: the official train.py `--dataset` value, or `None`.
        tfds_name: the TensorFlow Datasets name the pipelines read, or
            `None` when the library reads the dataset from elsewhere.
        aliases: further names `get` accepts.
        crop_box: PIL-style `(left, top, right, bottom)` box the stored images
            are cropped to before being resized to `image_size`; `None` when
            they are stored at `image_size`.
        binarization: `"dynamic"` (a Bernoulli sample per pixel, redrawn each
            epoch), `"stored"` (stored as `{0, 1}`) or `None`.
        flip: whether training images are flipped left-right at random.
        cache: whether a decoded split is small enough to cache in memory.
        tfds_splits: `(split, TFDS split)` pairs for the splits whose
            TensorFlow Datasets expression differs from their name.

    Example:

    ```python
    spec = DatasetSpec(
        name="faces48", image_size=48, channels=3, likelihood="dmol", flip=True
    )
    spec.image_shape  # (48, 48, 3)
    ```
    """

    name: str
    image_size: int
    channels: int
    likelihood: str
    num_x_bits: int = 8
    pad_to: int | None = None
    official_name: str | None = None
    tfds_name: str | None = None
    aliases: tuple = ()
    crop_box: tuple | None = None
    binarization: str | None = None
    flip: bool = False
    cache: bool = False
    tfds_splits: tuple = ()

    def __post_init__(self):
        problems = []
        if self.channels not in (1, 3):
            problems.append(f"channels must be 1 or 3, got {self.channels!r}")
        if self.likelihood not in LIKELIHOODS:
            problems.append(
                f"likelihood must be one of {list(LIKELIHOODS)}, got {self.likelihood!r}"
            )
        if not 1 <= self.num_x_bits <= 8:
            problems.append(f"num_x_bits must be in [1, 8], got {self.num_x_bits!r}")
        if self.binarization not in (None,) + BINARIZATIONS:
            problems.append(
                f"binarization must be None or one of {list(BINARIZATIONS)}, "
                f"got {self.binarization!r}"
            )
        if self.crop_box is not None and len(self.crop_box) != 4:
            problems.append(
                f"crop_box must be (left, top, right, bottom), got {self.crop_box!r}"
            )
        if problems:
            raise ValueError(f"Invalid DatasetSpec {self.name!r}: {'; '.join(problems)}.")

    @property
    def image_shape(self):
        """`(image_size, image_size, channels)`."""
        return (self.image_size, self.image_size, self.channels)

    @property
    def names(self):
        """Every name of the dataset, the canonical one first."""
        names = (self.name, self.official_name, self.tfds_name) + tuple(self.aliases)
        return tuple(dict.fromkeys(n for n in names if n is not None))

    def tfds_split(self, split):
        """The TensorFlow Datasets split expression that reads `split`."""
        return dict(self.tfds_splits).get(split, split)

    def config_fields(self):
        """The `NVAEConfig` fields this dataset determines.

        Returns:
            A dict with `image_shape`, `pad_to`, `likelihood` and `num_x_bits`.
        """
        return dict(
            image_shape=self.image_shape,
            pad_to=self.pad_to,
            likelihood=self.likelihood,
            num_x_bits=self.num_x_bits,
        )


def _rgb(name, image_size, **facts):
    """An 8-bit RGB dataset with the DMoL likelihood, flipped on train."""
    return DatasetSpec(
        name=name, image_size=image_size, channels=3, likelihood="dmol", flip=True, **facts
    )


def _binary_28(name, **facts):
    """A binarised 28x28 grayscale dataset, padded to 32 as in the official code."""
    return DatasetSpec(
        name=name, image_size=28, channels=1, likelihood="bernoulli", pad_to=32, **facts
    )


# The official data transforms: MNIST and OMNIGLOT are dynamically binarised on
# every split; every RGB dataset is flipped on train only.
_SPECS = (
    _binary_28(
        "mnist", official_name="mnist", tfds_name="mnist", binarization="dynamic", cache=True
    ),
    _binary_28("binarized_mnist", tfds_name="binarized_mnist", binarization="stored", cache=True),
    _binary_28("omniglot", official_name="omniglot", binarization="dynamic"),
    _rgb("cifar10", 32, official_name="cifar10", tfds_name="cifar10", cache=True),
    # The official CelebA 64 crop of the 178x218 images: (15, 40, 178 - 15, 218 - 30).
    _rgb(
        "celeba64",
        64,
        official_name="celeba_64",
        tfds_name="celeb_a",
        crop_box=(15, 40, 163, 188),
    ),
    # TFDS has only a train split; NVAE trains on the first 27,000 images and
    # evaluates on the last 3,000.
    _rgb(
        "celebahq256",
        256,
        num_x_bits=5,
        official_name="celeba_256",
        tfds_name="celeb_a_hq/256",
        aliases=("celeba256",),
        tfds_splits=(
            ("train", "train[:27000]"),
            ("validation", "train[27000:]"),
            ("test", "train[27000:]"),
        ),
    ),
    _rgb(
        "imagenet32",
        32,
        official_name="imagenet_32",
        tfds_name="imagenet_resized/32x32",
        tfds_splits=(("test", "validation"),),
    ),
    _rgb("imagenet64", 64, official_name="imagenet_64"),
    _rgb("ffhq256", 256, num_x_bits=5, official_name="ffhq"),
    _rgb("lsun_bedroom128", 128, official_name="lsun_bedroom_128"),
    _rgb("lsun_church128", 128, official_name="lsun_church_128"),
    _rgb("lsun_church64", 64, official_name="lsun_church_64"),
    # scikit-learn's 8x8 digits, 0..16 scaled to 0..255; not flipped.
    DatasetSpec(name="digits", image_size=8, channels=1, likelihood="dmol"),
)


def _index(specs):
    """{name or alias: spec}; raises if two datasets share a name."""
    index = {}
    for spec in specs:
        for name in spec.names:
            if name in index and index[name] is not spec:
                raise ValueError(
                    f"Dataset name {name!r} is used by both {index[name].name!r} "
                    f"and {spec.name!r}; every name must be unique."
                )
            index[name] = spec
    return index


_BY_NAME = _index(_SPECS)


def specs():
    """Every registered `DatasetSpec`, sorted by canonical name."""
    return tuple(sorted(_SPECS, key=lambda spec: spec.name))


def get(name):
    """The `DatasetSpec` of a dataset.

    Args:
        name: the library's name (`"celeba64"`), the official train.py
            `--dataset` value (`"celeba_64"`), the TensorFlow Datasets name
            (`"celeb_a"`) or another alias of a registered dataset.

    Returns:
        The `DatasetSpec`.

    Raises:
        ValueError: `name` is not a registered dataset (the message lists the
            known names).

    Example:

    >>> get("imagenet_resized/32x32").name
    'imagenet32'
    """
    spec = _BY_NAME.get(name) if isinstance(name, str) else None
    if spec is None:
        known = "; ".join(
            spec.name + (f" ({', '.join(spec.names[1:])})" if len(spec.names) > 1 else "")
            for spec in specs()
        )
        raise ValueError(
            f"Unknown dataset {name!r}. Known datasets (other names in "
            f"parentheses): {known}."
        )
    return spec
