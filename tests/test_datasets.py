"""The dataset registry and its users: presets, the converter and the TFDS pipelines."""

import numpy as np
import pytest
import tensorflow as tf

from keras_nvae import data
from keras_nvae.official import convert
from keras_nvae.data import tfds as tfds_lib
from keras_nvae.data import registry as datasets
from keras_nvae.presets import PRESETS, preset_config

# Every name of every dataset, canonical name first (official train.py --dataset
# values from NVlabs/NVAE; TFDS names from the TensorFlow Datasets catalog).
NAMES = {
    "mnist": ("mnist",),
    "binarized_mnist": ("binarized_mnist",),
    "omniglot": ("omniglot",),
    "cifar10": ("cifar10",),
    "celeba64": ("celeba64", "celeba_64", "celeb_a"),
    "celebahq256": ("celebahq256", "celeba_256", "celeb_a_hq/256", "celeba256"),
    "imagenet32": ("imagenet32", "imagenet_32", "imagenet_resized/32x32"),
    "imagenet64": ("imagenet64", "imagenet_64"),
    "ffhq256": ("ffhq256", "ffhq"),
    "lsun_bedroom128": ("lsun_bedroom128", "lsun_bedroom_128"),
    "lsun_church128": ("lsun_church128", "lsun_church_128"),
    "lsun_church64": ("lsun_church64", "lsun_church_64"),
    "digits": ("digits",),
}

# (image_shape, pad_to, likelihood, num_x_bits): official utils.py input sizes and
# channels, MNIST/OMNIGLOT padded to 32 and Bernoulli, 5 bits for CelebA-HQ and FFHQ
# (paper Table 1).
FACTS = {
    "mnist": ((28, 28, 1), 32, "bernoulli", 8),
    "binarized_mnist": ((28, 28, 1), 32, "bernoulli", 8),
    "omniglot": ((28, 28, 1), 32, "bernoulli", 8),
    "cifar10": ((32, 32, 3), None, "dmol", 8),
    "celeba64": ((64, 64, 3), None, "dmol", 8),
    "celebahq256": ((256, 256, 3), None, "dmol", 5),
    "imagenet32": ((32, 32, 3), None, "dmol", 8),
    "imagenet64": ((64, 64, 3), None, "dmol", 8),
    "ffhq256": ((256, 256, 3), None, "dmol", 5),
    "lsun_bedroom128": ((128, 128, 3), None, "dmol", 8),
    "lsun_church128": ((128, 128, 3), None, "dmol", 8),
    "lsun_church64": ((64, 64, 3), None, "dmol", 8),
    "digits": ((8, 8, 1), None, "dmol", 8),
}


# --------------------------------------------------------------- the registry
def test_registry_holds_exactly_the_listed_datasets():
    assert [spec.name for spec in datasets.specs()] == sorted(NAMES)


@pytest.mark.parametrize(
    "name, alias", [(name, alias) for name, aliases in NAMES.items() for alias in aliases]
)
def test_lookup_by_every_name(name, alias):
    spec = datasets.get(alias)
    assert spec.name == name
    assert spec.names == NAMES[name]


@pytest.mark.parametrize("name", sorted(FACTS))
def test_facts(name):
    spec = datasets.get(name)
    image_shape, pad_to, likelihood, num_x_bits = FACTS[name]
    assert spec.image_shape == image_shape
    assert (spec.image_size, spec.channels) == (image_shape[0], image_shape[2])
    assert spec.config_fields() == dict(
        image_shape=image_shape, pad_to=pad_to, likelihood=likelihood, num_x_bits=num_x_bits
    )


def test_pipeline_facts_of_the_official_transforms():
    # MNIST is binarised on every split, RGB data is flipped on train (official datasets.py).
    assert datasets.get("mnist").binarization == "dynamic"
    assert datasets.get("binarized_mnist").binarization == "stored"
    assert not datasets.get("mnist").flip and datasets.get("cifar10").flip
    assert datasets.get("celeb_a").crop_box == (15, 40, 163, 188)
    celebahq = datasets.get("celeba_256")
    assert [celebahq.tfds_split(s) for s in ("train", "validation", "test", "train[:10]")] == [
        "train[:27000]",
        "train[27000:]",
        "train[27000:]",
        "train[:10]",
    ]
    assert datasets.get("imagenet_32").tfds_split("test") == "validation"
    assert datasets.get("cifar10").tfds_split("test") == "test"


@pytest.mark.parametrize("name", ["svhn", "celeba-64", "CIFAR10", None, 10])
def test_unknown_name_lists_known_names(name):
    with pytest.raises(ValueError) as info:
        datasets.get(name)
    message = str(info.value)
    assert f"Unknown dataset {name!r}" in message
    assert "celeba64 (celeba_64, celeb_a)" in message
    assert "cifar10" in message and "lsun_church64 (lsun_church_64)" in message


def test_duplicate_names_are_rejected():
    first = datasets.DatasetSpec(name="a", image_size=8, channels=3, likelihood="dmol")
    second = datasets.DatasetSpec(
        name="b", image_size=8, channels=3, likelihood="dmol", aliases=("a",)
    )
    with pytest.raises(ValueError, match="'a' is used by both 'a' and 'b'"):
        datasets._index([first, second])


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("channels", 2, "channels must be 1 or 3, got 2"),
        ("likelihood", "gaussian", "likelihood must be one of .*got 'gaussian'"),
        ("num_x_bits", 9, r"num_x_bits must be in \[1, 8\], got 9"),
        ("binarization", "static", "binarization must be None or one of"),
        ("crop_box", (0, 0, 4), "crop_box must be"),
    ],
)
def test_invalid_spec_names_the_field(field, value, message):
    facts = dict(name="bad", image_size=8, channels=3, likelihood="dmol")
    with pytest.raises(ValueError, match=f"Invalid DatasetSpec 'bad': {message}"):
        datasets.DatasetSpec(**{**facts, field: value})


# ------------------------------------------------------------------ presets
# (image_shape, pad_to, likelihood, num_x_bits) of every preset.
PRESET_FACTS = {
    "mnist": ((28, 28, 1), 32, "bernoulli", 8),
    "cifar10": ((32, 32, 3), None, "dmol", 8),
    "celeba64": ((64, 64, 3), None, "dmol", 8),
    "imagenet32": ((32, 32, 3), None, "dmol", 8),
    "celebahq256": ((256, 256, 3), None, "dmol", 5),
    "ffhq256": ((256, 256, 3), None, "dmol", 5),
    "digits": ((8, 8, 1), None, "dmol", 8),
    "tiny": ((16, 16, 3), None, "dmol", 8),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_data_fields_equal_its_dataset(name):
    config = preset_config(name)
    got = (config.image_shape, config.pad_to, config.likelihood, config.num_x_bits)
    assert got == PRESET_FACTS[name]
    dataset = PRESETS[name]["dataset"]
    if dataset is not None:
        spec = datasets.get(dataset)
        assert got == (spec.image_shape, spec.pad_to, spec.likelihood, spec.num_x_bits)


def test_preset_overrides_win_over_dataset_facts():
    config = preset_config("celeba64", num_x_bits=5, image_shape=(32, 32, 3))
    assert (config.num_x_bits, config.image_shape) == (5, (32, 32, 3))


# ---------------------------------------------------------------- converter
def _official_args(dataset, num_mixture_dec=10):
    return dict(
        dataset=dataset,
        num_mixture_dec=num_mixture_dec,
        num_x_bits=5,
        num_latent_scales=1,
        num_groups_per_scale=2,
        num_latent_per_group=2,
        num_channels_enc=4,
        num_channels_dec=4,
        num_preprocess_blocks=1,
        num_postprocess_blocks=1,
        num_preprocess_cells=1,
        num_postprocess_cells=1,
        num_cell_per_cond_enc=1,
        num_cell_per_cond_dec=1,
    )


# official --dataset -> (image_shape, pad_to); the converter's table before the registry.
OFFICIAL_GEOMETRY = {
    "mnist": ((28, 28, 1), 32),
    "omniglot": ((28, 28, 1), 32),
    "cifar10": ((32, 32, 3), None),
    "celeba_64": ((64, 64, 3), None),
    "celeba_256": ((256, 256, 3), None),
    "imagenet_32": ((32, 32, 3), None),
    "imagenet_64": ((64, 64, 3), None),
    "ffhq": ((256, 256, 3), None),
    "lsun_bedroom_128": ((128, 128, 3), None),
    "lsun_church_128": ((128, 128, 3), None),
    "lsun_church_64": ((64, 64, 3), None),
}


@pytest.mark.parametrize("dataset", sorted(OFFICIAL_GEOMETRY))
def test_converter_geometry_and_likelihood(dataset):
    image_shape, pad_to = OFFICIAL_GEOMETRY[dataset]
    binary = image_shape[-1] == 1
    for mixtures, rgb_likelihood in ((10, "dmol"), (1, "normal")):
        config = convert.config_from_official_args(_official_args(dataset, mixtures))
        assert (config.image_shape, config.pad_to) == (image_shape, pad_to)
        assert config.likelihood == ("bernoulli" if binary else rgb_likelihood)
        # The checkpoint's --num_x_bits is kept, except for binarised data (always 8).
        assert config.num_x_bits == (8 if binary else 5)


@pytest.mark.parametrize("dataset", ["celeba64", "celeb_a", "stacked_mnist", "svhn"])
def test_converter_accepts_only_official_names(dataset):
    supported = sorted(OFFICIAL_GEOMETRY)
    with pytest.raises(ValueError) as info:
        convert.config_from_official_args(_official_args(dataset))
    assert str(info.value) == (
        f"Official flag --dataset={dataset!r} is not supported; supported: {supported}."
    )


# ----------------------------------------------------------- TFDS pipelines
def test_tfds_pipeline_defaults_are_the_official_transforms():
    preset = tfds_lib._TfdsPreset
    assert tfds_lib._TFDS_PRESETS == {
        "mnist": preset(binarize=True, cache=True),
        "binarized_mnist": preset(already_binary=True, cache=True),
        "cifar10": preset(flip=True, cache=True),
        "celeb_a": preset(flip=True, crop_box=(15, 40, 163, 188), image_size=64),
        "imagenet_resized/32x32": preset(flip=True, split_aliases={"test": "validation"}),
        "celeb_a_hq/256": preset(
            flip=True,
            split_aliases={
                "train": "train[:27000]",
                "validation": "train[27000:]",
                "test": "train[27000:]",
            },
        ),
    }
    assert tfds_lib._TFDS_ALIASES == {
        "celeba64": "celeb_a",
        "celeba_64": "celeb_a",
        "celebahq256": "celeb_a_hq/256",
        "celeba256": "celeb_a_hq/256",
        "celeba_256": "celeb_a_hq/256",
        "imagenet32": "imagenet_resized/32x32",
        "imagenet_32": "imagenet_resized/32x32",
    }


@pytest.mark.parametrize(
    "name, split, tfds_split",
    [
        ("imagenet_32", "test", "validation"),
        ("celeba_256", "test", "train[27000:]"),
        ("celebahq256", "train", "train[:27000]"),
    ],
)
def test_load_tfds_reads_official_names(monkeypatch, name, split, tfds_split):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    size = datasets.get(name).image_size
    requested = []

    def as_dataset(self, split, **kwargs):
        requested.append((self.name, split))
        images = np.full((3, size, size, 3), 7, np.uint8)
        return tf.data.Dataset.from_tensor_slices({"image": images})

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        ds = data.load_tfds(name, split, batch_size=3, shuffle=False)
        images = np.concatenate([batch.numpy() for batch in ds])
    tfds_name = datasets.get(name).tfds_name.split("/")[0]
    assert requested == [(tfds_name, tfds_split)]
    np.testing.assert_array_equal(images, np.full((3, size, size, 3), 7, np.uint8))
