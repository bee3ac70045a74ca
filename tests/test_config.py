"""NVAEConfig validation, derived geometry and the presets."""

import json

import numpy as np
import pytest

from keras_nvae import NVAE, NVAEConfig
from keras_nvae.training import objectives
from keras_nvae.config import parse_overrides
from keras_nvae.presets import PRESETS, preset_config

# Trainable-parameter counts of the official PyTorch model for its README's training commands,
# counted over every nn.Parameter of the official model instantiated with each command's flags.
OFFICIAL_PARAMS = {
    "mnist": 33_363_134,
    "cifar10": 130_852_480,
    "celeba64": 153_281_364,
    "imagenet32": 268_509_444,
    "celebahq256": 330_798_664,
    "ffhq256": 330_798_664,
}


@pytest.mark.parametrize(
    "name, groups, top",
    [
        ("mnist", (10, 5), (4, 4, 20)),
        ("cifar10", (30,), (16, 16, 20)),
        ("celeba64", (20, 10, 5), (8, 8, 20)),
        ("imagenet32", (28,), (16, 16, 20)),
        ("celebahq256", (16, 8, 4, 4, 4), (8, 8, 20)),
        ("ffhq256", (16, 8, 4, 4, 4), (8, 8, 20)),
    ],
)
def test_groups_per_scale_and_top_latent(name, groups, top):
    config = preset_config(name)
    assert config.groups_per_scale == groups
    assert config.latent_shapes[0] == top
    assert len(config.latent_shapes) == sum(groups)
    # The last (highest-resolution) group is 2**(L-1) times the top's size.
    assert config.latent_shapes[-1][0] == top[0] * 2 ** (len(groups) - 1)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("cifar10", [1.0] * 30),
        ("imagenet32", [1.0] * 28),
        ("mnist", [1.0] * 5 + [2.0] * 10),
        ("celeba64", [1.0] * 5 + [2.0] * 10 + [4.0] * 20),
        ("celebahq256", [1.0] * 4 + [4.0] * 4 + [16.0] * 4 + [32.0] * 8 + [64.0] * 16),
    ],
)
def test_kl_balancing_alphas_per_preset(name, expected):
    alphas = objectives.kl_balancing_alphas(preset_config(name).groups_per_scale)
    np.testing.assert_allclose(alphas, expected)


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
def test_preset_trainable_parameter_count_equals_official(name):
    model = NVAE.from_preset(name)
    count = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    assert count == OFFICIAL_PARAMS[name]


def test_presets_listing_and_unknown_name():
    presets = NVAE.presets
    for name in ("mnist", "cifar10", "celeba64", "imagenet32", "celebahq256", "ffhq256", "digits", "tiny"):
        assert name in presets and presets[name]
    with pytest.raises(ValueError, match="Known presets: .*cifar10"):
        NVAE.from_preset("cifar100")


def test_official_flags_of_presets():
    cifar = preset_config("cifar10")
    assert (cifar.num_channels_enc, cifar.num_flows, cifar.weight_decay_norm) == (128, 1, 1e-2)
    ffhq = preset_config("ffhq256")
    assert (ffhq.num_x_bits, ffhq.learning_rate, ffhq.weight_decay_norm) == (5, 8e-3, 1e-1)
    assert ffhq.weight_decay_norm_anneal and ffhq.weight_decay_norm_init == 1.0
    mnist = preset_config("mnist")
    assert (mnist.likelihood, mnist.pad_to, mnist.num_flows) == ("bernoulli", 32, 0)
    imagenet = preset_config("imagenet32")
    assert imagenet.warmup_epochs == 1 and imagenet.weight_decay_norm_anneal


def test_overrides_and_json_round_trip():
    config = preset_config("cifar10", num_channels_enc=32, num_groups_per_scale=5)
    assert config.num_channels_enc == 32 and config.num_groups_per_scale == 5
    again = NVAEConfig.from_json(config.to_json())
    assert again == config
    json.loads(config.to_json())  # plain JSON
    with pytest.raises(dataclass_frozen_error()):
        config.num_channels_enc = 3


def dataclass_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"likelihood": "gaussian"}, r"likelihood must be one of \['bernoulli', 'dmol', 'normal'\]"),
        ({"arch_instance": "res_mbconv9"}, "arch_instance must be one of"),
        ({"num_x_bits": 9}, "num_x_bits"),
        ({"num_channels_enc": 0}, "num_channels_enc must be an integer >= 1"),
        ({"num_flows": -1}, "num_flows must be an integer >= 0"),
        ({"image_shape": (32, 32, 2)}, "channels"),
        ({"image_shape": (31, 31, 3)}, "divisible"),
        ({"kl_anneal_portion": 0.0}, "kl_anneal_portion must be > 0"),
        ({"num_postprocess_blocks": 2}, "num_preprocess_blocks and num_postprocess_blocks"),
        ({"weight_decay_norm_anneal": True, "weight_decay_norm": 0.0}, "both be > 0"),
        ({"unknown_field": 1}, "Unknown NVAEConfig field"),
    ],
)
def test_invalid_values_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        preset_config("cifar10", **overrides)


def test_groups_with_ada_and_minimum():
    config = NVAEConfig(
        image_shape=(256, 256, 3),
        num_latent_scales=5,
        num_groups_per_scale=16,
        ada_groups=True,
        min_groups_per_scale=4,
        num_preprocess_blocks=1,
        num_postprocess_blocks=1,
    )
    assert config.groups_per_scale == (16, 8, 4, 4, 4)
    assert config.decoder_groups_per_scale == (4, 4, 4, 8, 16)
    assert PRESETS["celebahq256"]["config"]["min_groups_per_scale"] == 4


def test_parse_overrides_values():
    overrides = parse_overrides(
        [
            "num_channels_enc=16",
            "image_shape=[16, 16, 3]",
            "likelihood=bernoulli",
            'arch_instance="res_bnswish"',
            "pad_to=null",
            "use_se=false",
            "learning_rate=1",
            "kl_const_coeff=1e-3",
            "num_channels_enc=24",  # a later item for the same field wins
        ]
    )
    assert overrides == {
        "num_channels_enc": 24,
        "image_shape": [16, 16, 3],
        "likelihood": "bernoulli",
        "arch_instance": "res_bnswish",
        "pad_to": None,
        "use_se": False,
        "learning_rate": 1.0,
        "kl_const_coeff": 1e-3,
    }
    # Integers for float fields become floats; integer fields keep ints.
    assert type(overrides["learning_rate"]) is float
    assert type(overrides["num_channels_enc"]) is int
    config = NVAEConfig().replace(**overrides)
    assert config.image_shape == (16, 16, 3) and config.num_channels_enc == 24
    assert parse_overrides([]) == {}


@pytest.mark.parametrize(
    "item, message",
    [
        ("num_channels_enc", "expects key=value"),
        ("=16", "expects key=value"),
        (
            "num_channels=4",
            "unknown NVAEConfig field 'num_channels'. "
            "Close matches: num_channels_enc, num_channels_dec.",
        ),
        ("lerning_rate=0.1", "Close matches: learning_rate, learning_rate_min."),
        ("zzz=1", "Fields: ada_groups, arch_instance, batch_size,"),
    ],
)
def test_parse_overrides_errors(item, message):
    with pytest.raises(ValueError) as error:
        parse_overrides([item])
    assert message in str(error.value)
