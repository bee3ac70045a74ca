"""`NVAEConfig`: every official NVAE flag that shapes the model or its training."""

import dataclasses
import difflib
import json

LIKELIHOODS = ("bernoulli", "dmol", "normal")
# Gradient checkpointing: what is recomputed in the backward pass (see `NVAEConfig.remat`).
REMAT_POLICIES = ("none", "cell", "group")

# Cell recipes per cell type (official utils.get_arch_cells). Each entry lists the
# ops of one residual cell; "bnswish" is BN-Swish-Conv3x3, "mbconv_eX" is the
# inverted residual with expansion X and a 5x5 depthwise conv.
ARCHITECTURES = {
    "res_mbconv": {
        "normal_enc": ("bnswish", "bnswish"),
        "down_enc": ("bnswish", "bnswish"),
        "normal_dec": ("mbconv_e6",),
        "up_dec": ("mbconv_e6",),
        "normal_pre": ("bnswish", "bnswish"),
        "down_pre": ("bnswish", "bnswish"),
        "normal_post": ("mbconv_e3",),
        "up_post": ("mbconv_e3",),
    },
    "res_bnswish": {
        cell_type: ("bnswish", "bnswish")
        for cell_type in (
            "normal_enc",
            "down_enc",
            "normal_dec",
            "up_dec",
            "normal_pre",
            "down_pre",
            "normal_post",
            "up_post",
        )
    },
    "mbconv_sep": {
        "normal_enc": ("mbconv_e6",),
        "down_enc": ("mbconv_e6",),
        "normal_dec": ("mbconv_e6",),
        "up_dec": ("mbconv_e6",),
        "normal_pre": ("mbconv_e3",),
        "down_pre": ("mbconv_e3",),
        "normal_post": ("mbconv_e3",),
        "up_post": ("mbconv_e3",),
    },
}


def _choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(
            f"NVAEConfig.{name} must be one of {list(allowed)}, got {value!r}."
        )


def _positive_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"NVAEConfig.{name} must be an integer >= {minimum}, got {value!r}."
        )


def _number(name, value, low=None, high=None, low_open=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"NVAEConfig.{name} must be a number, got {value!r}.")
    if low is not None and (value < low or (low_open and value == low)):
        bound = f"> {low}" if low_open else f">= {low}"
        raise ValueError(f"NVAEConfig.{name} must be {bound}, got {value!r}.")
    if high is not None and value > high:
        raise ValueError(f"NVAEConfig.{name} must be <= {high}, got {value!r}.")


@dataclasses.dataclass(frozen=True)
class NVAEConfig:
    """Immutable, validated configuration of an NVAE model and its training.

    Field names follow the official `train.py` flags where one exists.

    Args:
        image_shape: (height, width, channels) of the data. Channels 1 or 3.
        pad_to: int or None. Zero-pad images to this square size inside the
            model (official MNIST: 28 -> 32). The reconstruction likelihood is
            computed on the unpadded centre.
        likelihood: "bernoulli" (binarised data), "dmol" (discretised mixture of
            logistics) or "normal" (the official continuous Normal decoder).
        num_mixtures: logistic mixture components (`--num_mixture_dec`).
        num_x_bits: bit depth the model sees (`--num_x_bits`).
        num_latent_scales, num_groups_per_scale, ada_groups,
        min_groups_per_scale, num_latent_per_group: the latent hierarchy.
        num_channels_enc, num_channels_dec: base widths.
        num_preprocess_blocks, num_preprocess_cells, num_postprocess_blocks,
        num_postprocess_cells, num_cell_per_cond_enc, num_cell_per_cond_dec:
            network depth.
        num_flows: paired IAF cells per latent group (`--num_nf`).
        use_se: squeeze-and-excitation in every residual cell.
        res_dist: residual Normal posteriors.
        arch_instance: cell recipe, one of `ARCHITECTURES`.
        official_dmol: reproduce the official DMoL likelihood (right edge at
            0.99, which leaves the 8-bit likelihood unnormalised). For parity
            only.
        remat: gradient checkpointing policy, one of `REMAT_POLICIES`: what
            drops its activations after the forward pass and recomputes them
            in the backward pass. `"cell"`: every residual cell; `"group"`:
            every latent group as a whole (its decoder cells, posterior,
            prior, flows and combiner, with the drawn noise kept) and every
            cell outside the groups; `False` (or `"none"`): nothing; `True`:
            `"group"`, the policy that keeps least. Does not change the model
            or its outputs; not an official flag.
        kl_anneal_portion, kl_const_portion, kl_const_coeff: KL warm-up.
        kl_balance: KL balancing across groups during warm-up.
        weight_decay_norm: lambda of the spectral and BN regularisers.
        weight_decay_norm_init, weight_decay_norm_anneal: lambda annealing.
        learning_rate, learning_rate_min, warmup_epochs, weight_decay, epochs,
        batch_size: optimiser and schedule (Adamax, warm-up then cosine).
        max_consecutive_nonfinite: steps in a row with a non-finite loss or
            gradient (each skipped, changing nothing) after which `fit` stops
            with `keras_nvae.step_guard.NonFiniteTrainingError`; 0 never stops.
        grad_clip_norm: clip the gradient to this global norm; 0 for none.
        grad_skip_norm: skip (and count) updates whose gradient global norm,
            before clipping, exceeds this, as VDVAE does; 0 for none.
        ema_decay: keep an exponential moving average of the weights with this
            decay (e.g. 0.9999) and use it for evaluation, sampling and
            export; 0 for none.
    """

    image_shape: tuple = (32, 32, 3)
    pad_to: int | None = None
    likelihood: str = "dmol"
    num_mixtures: int = 10
    num_x_bits: int = 8
    num_latent_scales: int = 1
    num_groups_per_scale: int = 10
    ada_groups: bool = False
    min_groups_per_scale: int = 1
    num_latent_per_group: int = 20
    num_channels_enc: int = 32
    num_channels_dec: int = 32
    num_preprocess_blocks: int = 2
    num_preprocess_cells: int = 3
    num_postprocess_blocks: int = 2
    num_postprocess_cells: int = 3
    num_cell_per_cond_enc: int = 1
    num_cell_per_cond_dec: int = 1
    num_flows: int = 0
    use_se: bool = True
    res_dist: bool = True
    arch_instance: str = "res_mbconv"
    official_dmol: bool = False
    remat: bool | str = False
    kl_anneal_portion: float = 0.3
    kl_const_portion: float = 1e-4
    kl_const_coeff: float = 1e-4
    kl_balance: bool = True
    weight_decay_norm: float = 0.0
    weight_decay_norm_init: float = 10.0
    weight_decay_norm_anneal: bool = False
    learning_rate: float = 1e-2
    learning_rate_min: float = 1e-4
    warmup_epochs: int = 5
    weight_decay: float = 3e-4
    epochs: int = 200
    batch_size: int = 200
    max_consecutive_nonfinite: int = 10
    grad_clip_norm: float = 0.0
    grad_skip_norm: float = 0.0
    ema_decay: float = 0.0

    def __post_init__(self):
        """Makes `image_shape` a tuple of ints and validates every field."""
        object.__setattr__(self, "image_shape", tuple(int(v) for v in self.image_shape))
        self._check_choices()
        self._check_counts()
        self._check_geometry()
        self._check_training()

    def _check_choices(self):
        """Checks the image shape's rank and channels and the named choices.

        Raises:
            ValueError: naming the field, its allowed values and the value given.
        """
        if len(self.image_shape) != 3:
            raise ValueError(
                "NVAEConfig.image_shape must be (height, width, channels), got "
                f"{self.image_shape!r}."
            )
        _choice("image_shape[-1] (channels)", self.image_shape[-1], (1, 3))
        _choice("likelihood", self.likelihood, LIKELIHOODS)
        _choice("arch_instance", self.arch_instance, tuple(ARCHITECTURES))
        if not isinstance(self.remat, bool) and self.remat not in REMAT_POLICIES:
            raise ValueError(
                f"NVAEConfig.remat must be True, False or one of {list(REMAT_POLICIES)}, "
                f"got {self.remat!r}."
            )
        if self.likelihood == "bernoulli" and self.num_x_bits != 8:
            raise ValueError(
                "NVAEConfig.num_x_bits must be 8 with likelihood='bernoulli' "
                f"(binarised data), got {self.num_x_bits}."
            )

    def _check_counts(self):
        """Checks the integer fields (sizes, depths, epochs) and their pairings.

        Raises:
            ValueError: a count that is not an integer in range, unequal
                pre-/post-processing depths, or the unsupported one-group model.
        """
        for name in (
            "num_mixtures",
            "num_latent_scales",
            "num_groups_per_scale",
            "min_groups_per_scale",
            "num_latent_per_group",
            "num_channels_enc",
            "num_channels_dec",
            "num_preprocess_cells",
            "num_postprocess_cells",
            "num_cell_per_cond_enc",
            "num_cell_per_cond_dec",
            "epochs",
            "batch_size",
        ):
            _positive_int(name, getattr(self, name))
        for name in (
            "num_preprocess_blocks",
            "num_postprocess_blocks",
            "num_flows",
            "warmup_epochs",
        ):
            _positive_int(name, getattr(self, name), minimum=0)
        _positive_int("num_x_bits", self.num_x_bits)
        if self.num_x_bits > 8:
            raise ValueError(
                f"NVAEConfig.num_x_bits must be in [1, 8], got {self.num_x_bits}."
            )
        if self.num_preprocess_blocks != self.num_postprocess_blocks:
            raise ValueError(
                "NVAEConfig.num_preprocess_blocks and num_postprocess_blocks must be "
                f"equal, got {self.num_preprocess_blocks} and "
                f"{self.num_postprocess_blocks}."
            )
        if self.num_latent_scales == 1 and self.num_groups_per_scale == 1:
            raise ValueError(
                "NVAEConfig: one latent scale with one group (the official "
                "'vanilla VAE' mode) is not supported; use num_groups_per_scale >= 2 "
                "or more latent scales."
            )

    def _check_geometry(self):
        """Checks that the (padded) image is square and fits the downsampling.

        Raises:
            ValueError: a non-square image, a `pad_to` smaller than the image or
                with odd padding, or a size the network cannot halve enough times.
        """
        height, width, _ = self.image_shape
        if height != width:
            raise ValueError(
                f"NVAEConfig.image_shape must be square, got {height}x{width}."
            )
        if self.pad_to is not None and self.pad_to < height:
            raise ValueError(
                f"NVAEConfig.pad_to ({self.pad_to}) must be >= the image size "
                f"({height})."
            )
        if self.pad_to is not None and (self.pad_to - height) % 2:
            raise ValueError(
                "NVAEConfig.pad_to - image size must be even (symmetric padding), "
                f"got {self.pad_to} - {height}."
            )
        size = self.model_image_size
        factor = 2 ** (self.num_preprocess_blocks + self.num_latent_scales - 1)
        if size % factor:
            raise ValueError(
                f"NVAEConfig: the (padded) image size {size} must be divisible by "
                f"2**(num_preprocess_blocks + num_latent_scales - 1) = {factor}; "
                "change pad_to, num_preprocess_blocks or num_latent_scales."
            )

    def _check_training(self):
        """Checks the KL warm-up, regulariser and optimiser numbers.

        Raises:
            ValueError: a value that is not a number in its range, or norm
                annealing without positive norm weights.
        """
        _number(
            "kl_anneal_portion", self.kl_anneal_portion, low=0, high=1, low_open=True
        )
        _number("kl_const_portion", self.kl_const_portion, low=0, high=1)
        _number("kl_const_coeff", self.kl_const_coeff, low=0, high=1)
        _number("weight_decay_norm", self.weight_decay_norm, low=0)
        _number("weight_decay_norm_init", self.weight_decay_norm_init, low=0)
        if self.weight_decay_norm_anneal and not (
            self.weight_decay_norm > 0 and self.weight_decay_norm_init > 0
        ):
            raise ValueError(
                "NVAEConfig.weight_decay_norm and weight_decay_norm_init must both "
                "be > 0 when weight_decay_norm_anneal is True."
            )
        _number("learning_rate", self.learning_rate, low=0, low_open=True)
        _number("learning_rate_min", self.learning_rate_min, low=0)
        _number("weight_decay", self.weight_decay, low=0)
        _positive_int("max_consecutive_nonfinite", self.max_consecutive_nonfinite, minimum=0)
        _number("grad_clip_norm", self.grad_clip_norm, low=0)
        _number("grad_skip_norm", self.grad_skip_norm, low=0)
        _number("ema_decay", self.ema_decay, low=0)
        if self.ema_decay >= 1:
            raise ValueError(
                "NVAEConfig.ema_decay must be in [0, 1) (0: no weight average), got "
                f"{self.ema_decay!r}."
            )

    # ---------------------------------------------------------------- geometry
    @property
    def model_image_size(self):
        """Square size the network works at (after `pad_to`)."""
        return self.pad_to if self.pad_to is not None else self.image_shape[0]

    @property
    def num_channels(self):
        return self.image_shape[-1]

    @property
    def groups_per_scale(self):
        """Groups per latent scale, encoder order (highest resolution first)."""
        groups = []
        n = self.num_groups_per_scale
        for _ in range(self.num_latent_scales):
            groups.append(n)
            if self.ada_groups:
                n = max(self.min_groups_per_scale, n // 2)
        return tuple(groups)

    @property
    def decoder_groups_per_scale(self):
        """Groups per latent scale, decoder order (top, lowest resolution first)."""
        return tuple(reversed(self.groups_per_scale))

    @property
    def num_groups(self):
        return sum(self.groups_per_scale)

    @property
    def latent_shapes(self):
        """[(h, w, c)] of every latent group in decoder order."""
        top = self.model_image_size // 2 ** (
            self.num_preprocess_blocks + self.num_latent_scales - 1
        )
        shapes = []
        for scale, groups in enumerate(self.decoder_groups_per_scale):
            size = top * 2**scale
            shapes += [(size, size, self.num_latent_per_group)] * groups
        return shapes

    @property
    def remat_policy(self):
        """`remat` as a policy name: "none", "cell" or "group" (`True` is "group")."""
        if self.remat is True:
            return "group"
        return "none" if self.remat is False else self.remat

    @property
    def architecture(self):
        return ARCHITECTURES[self.arch_instance]

    @property
    def num_dims(self):
        """Data dimensions the likelihood is summed over (bits/dim denominator)."""
        height, width, channels = self.image_shape
        return height * width * channels

    # ---------------------------------------------------------- serialisation
    def to_dict(self):
        config = dataclasses.asdict(self)
        config["image_shape"] = list(self.image_shape)
        return config

    @classmethod
    def from_dict(cls, config):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(
                f"Unknown NVAEConfig field(s) {unknown}. Known fields: {sorted(known)}."
            )
        return cls(**config)

    def to_json(self):
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text):
        return cls.from_dict(json.loads(text))

    def replace(self, **overrides):
        """A copy with some fields changed (validated)."""
        return self.from_dict({**self.to_dict(), **overrides})


def parse_overrides(items):
    """Parse `key=value` strings (command-line `--override` flags) into `NVAEConfig` fields.

    Values are JSON (numbers, booleans, lists, `null`); a value that is not JSON
    stays a string (`likelihood=dmol`). An integer given for a float field
    becomes a float. The values are checked when a config is built from them.

    Args:
        items: iterable of `key=value` strings.

    Returns:
        dict of field name to value (a later item for the same field wins).

    Raises:
        ValueError: an item that is not `key=value`, or an unknown field (the
            message lists the closest field names).

    Example:

    ```python
    overrides = parse_overrides(["num_channels_enc=16", "image_shape=[16,16,3]"])
    config = NVAEConfig().replace(**overrides)
    ```
    """
    types = {field.name: field.type for field in dataclasses.fields(NVAEConfig)}
    overrides = {}
    for item in items:
        key, separator, text = item.partition("=")
        key = key.strip()
        if not separator or not key:
            raise ValueError(
                f"An override expects key=value (e.g. num_channels_enc=16), got {item!r}."
            )
        if key not in types:
            close = difflib.get_close_matches(key, types, n=5, cutoff=0.6)
            names = f"Close matches: {', '.join(close)}" if close else (
                f"Fields: {', '.join(sorted(types))}"
            )
            raise ValueError(f"Override {item!r}: unknown NVAEConfig field {key!r}. {names}.")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        if types[key] is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        overrides[key] = value
    return overrides
