"""Named NVAE configurations: the paper's (official README commands) and small ones."""

from keras_nvae.config import NVAEConfig
from keras_nvae.data import registry as datasets

# Shared by every official command: --use_se --res_dist --fast_adamax, res_mbconv,
# 20 latent channels per group, 10 logistic mixtures.
_OFFICIAL_COMMON = dict(
    use_se=True,
    res_dist=True,
    arch_instance="res_mbconv",
    num_latent_per_group=20,
    num_cell_per_cond_enc=2,
    num_cell_per_cond_dec=2,
)

_PAPER_256 = dict(
    _OFFICIAL_COMMON,
    num_channels_enc=30,
    num_channels_dec=30,
    num_latent_scales=5,
    num_groups_per_scale=16,
    ada_groups=True,
    min_groups_per_scale=4,
    num_preprocess_blocks=1,
    num_preprocess_cells=2,
    num_postprocess_blocks=1,
    num_postprocess_cells=2,
    num_flows=2,
    weight_decay_norm_anneal=True,
    weight_decay_norm_init=1.0,
    batch_size=4,
)

# "dataset" names the `keras_nvae.datasets` entry that sets image_shape, pad_to,
# likelihood and num_x_bits; a preset without one sets them in "config".
PRESETS = {
    "mnist": {
        "dataset": "mnist",
        "description": "Binarised MNIST 28x28 (padded to 32), Bernoulli, 2 scales x [10, 5] "
        "groups, 32 channels; paper Table 1 (78.01 nats w/o flows).",
        "config": dict(
            _OFFICIAL_COMMON,
            num_channels_enc=32,
            num_channels_dec=32,
            num_latent_scales=2,
            num_groups_per_scale=10,
            ada_groups=True,
            num_preprocess_blocks=2,
            num_preprocess_cells=3,
            num_postprocess_blocks=2,
            num_postprocess_cells=3,
            num_flows=0,
            weight_decay_norm=1e-2,
            epochs=400,
            batch_size=200,
        ),
    },
    "cifar10": {
        "dataset": "cifar10",
        "description": "CIFAR-10 32x32, DMoL, 1 scale x 30 groups, 128 channels, 1 flow "
        "pair; paper Table 1 (2.91 bits/dim).",
        "config": dict(
            _OFFICIAL_COMMON,
            num_channels_enc=128,
            num_channels_dec=128,
            num_latent_scales=1,
            num_groups_per_scale=30,
            num_preprocess_blocks=1,
            num_preprocess_cells=2,
            num_postprocess_blocks=1,
            num_postprocess_cells=2,
            num_flows=1,
            weight_decay_norm=1e-2,
            epochs=400,
            batch_size=32,
        ),
    },
    "celeba64": {
        "dataset": "celeba64",
        "description": "CelebA 64x64, DMoL, 3 scales x [20, 10, 5] groups, 64 channels, "
        "1 flow pair; paper Table 1 (2.03 bits/dim).",
        "config": dict(
            _OFFICIAL_COMMON,
            num_channels_enc=64,
            num_channels_dec=64,
            num_latent_scales=3,
            num_groups_per_scale=20,
            ada_groups=True,
            num_preprocess_blocks=1,
            num_preprocess_cells=2,
            num_postprocess_blocks=1,
            num_postprocess_cells=2,
            num_flows=1,
            weight_decay_norm=1e-1,
            epochs=90,
            batch_size=16,
        ),
    },
    "imagenet32": {
        "dataset": "imagenet32",
        "description": "ImageNet 32x32, DMoL, 1 scale x 28 groups, 192 channels, 1 flow "
        "pair, annealed regulariser; paper Table 1 (3.92 bits/dim).",
        "config": dict(
            _OFFICIAL_COMMON,
            num_channels_enc=192,
            num_channels_dec=192,
            num_latent_scales=1,
            num_groups_per_scale=28,
            num_preprocess_blocks=1,
            num_preprocess_cells=2,
            num_postprocess_blocks=1,
            num_postprocess_cells=2,
            num_flows=1,
            weight_decay_norm=1e-2,
            weight_decay_norm_anneal=True,
            weight_decay_norm_init=1.0,
            warmup_epochs=1,
            epochs=45,
            batch_size=24,
        ),
    },
    "celebahq256": {
        "dataset": "celebahq256",
        "description": "CelebA-HQ 256x256 at 5 bits, DMoL, 5 scales x [16, 8, 4, 4, 4] "
        "groups, 30 channels, 2 flow pairs; paper Table 1 (0.70 bits/dim).",
        "config": dict(_PAPER_256, weight_decay_norm=1e-2, epochs=300),
    },
    "ffhq256": {
        "dataset": "ffhq256",
        "description": "FFHQ 256x256 at 5 bits, DMoL, 5 scales x [16, 8, 4, 4, 4] groups, "
        "30 channels, 2 flow pairs, lr 8e-3; paper Table 1 (0.69 bits/dim).",
        "config": dict(
            _PAPER_256, weight_decay_norm=1e-1, learning_rate=8e-3, epochs=200
        ),
    },
    "digits": {
        "dataset": "digits",
        "description": "scikit-learn's 8x8 digits (ships offline), DMoL, 2 scales x [2, 1] "
        "groups, 16 channels: trains on 2 CPU cores in about 3 minutes (README demo).",
        "config": dict(
            num_mixtures=5,
            num_channels_enc=16,
            num_channels_dec=16,
            num_latent_scales=2,
            num_groups_per_scale=2,
            ada_groups=True,
            num_latent_per_group=8,
            num_preprocess_blocks=1,
            num_preprocess_cells=1,
            num_postprocess_blocks=1,
            num_postprocess_cells=1,
            num_flows=0,
            weight_decay_norm=1e-2,
            learning_rate=5e-3,
            warmup_epochs=1,
            epochs=30,
            batch_size=32,
        ),
    },
    "tiny": {
        "dataset": None,
        "description": "A ~150k-parameter 16x16 RGB model with flows and two latent scales, for tests.",
        "config": dict(
            image_shape=(16, 16, 3),
            likelihood="dmol",
            num_mixtures=3,
            num_channels_enc=8,
            num_channels_dec=8,
            num_latent_scales=2,
            num_groups_per_scale=2,
            num_latent_per_group=4,
            num_preprocess_blocks=1,
            num_preprocess_cells=2,
            num_postprocess_blocks=1,
            num_postprocess_cells=2,
            num_flows=1,
            weight_decay_norm=1e-2,
            warmup_epochs=1,
            epochs=2,
            batch_size=8,
        ),
    },
}


def preset_names():
    return sorted(PRESETS)


def preset_descriptions():
    """{name: one-line description} of every built-in preset."""
    return {name: PRESETS[name]["description"] for name in preset_names()}


def preset_config(name, **overrides):
    """The `NVAEConfig` of a built-in preset, with overrides applied.

    Args:
        name: preset name, see `preset_descriptions()`.
        **overrides: `NVAEConfig` fields to change.

    Returns:
        An `NVAEConfig`.

    Raises:
        ValueError: unknown preset name or invalid override.
    """
    if name not in PRESETS:
        raise ValueError(
            f"Unknown NVAE preset {name!r}. Known presets: {', '.join(preset_names())}; "
            "or pass the path of a preset directory written by NVAE.save_to_preset."
        )
    preset = PRESETS[name]
    dataset = preset["dataset"]
    fields = datasets.get(dataset).config_fields() if dataset is not None else {}
    return NVAEConfig.from_dict({**fields, **preset["config"], **overrides})
