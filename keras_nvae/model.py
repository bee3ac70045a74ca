"""`NVAE`: the deep hierarchical VAE of Vahdat & Kautz (2020) as a `keras.Model`."""

import math

import keras
import numpy as np
import tensorflow as tf

from keras_nvae import distributions
from keras_nvae import objectives
from keras_nvae import optimizers as nvae_optimizers
from keras_nvae import presets as presets_lib
from keras_nvae.config import NVAEConfig
from keras_nvae.flows import PairedIAFCell
from keras_nvae.layers.combiners import DecoderCombiner, EncoderCombiner
from keras_nvae.layers.conv import Conv2D, spectral_matrices
from keras_nvae.layers.normalization import BatchNorm
from keras_nvae.layers.residual_cell import ResidualCell

CHANNEL_MULT = 2


class _ClassProperty:
    def __init__(self, getter):
        self.getter = getter

    def __get__(self, instance, owner):
        return self.getter(owner)


def _unpack_images(data):
    """Images from what `fit`/`evaluate` pass to the step (x, (x,), (x, y), ...)."""
    if isinstance(data, (tuple, list)):
        return data[0]
    if isinstance(data, dict):
        for key in ("image", "images", "x"):
            if key in data:
                return data[key]
        raise ValueError(
            "NVAE datasets that yield dicts must have an 'image' key, got keys "
            f"{sorted(data)}."
        )
    return data


@keras.saving.register_keras_serializable(package="keras_nvae")
class NVAE(keras.Model):
    """NVAE: a deep hierarchical VAE with residual cells and residual posteriors.

    The bottom-up encoder and the top-down decoder share the decoder's
    features (bidirectional inference); latent groups are arranged in scales,
    the first (top) group smallest. The architecture, numerics and objective
    follow the official PyTorch implementation (NVlabs/NVAE), so its
    checkpoints load (`keras_nvae.convert`) and reproduce its outputs.

    Args:
        config: an `NVAEConfig`, or a dict of its fields.
        **kwargs: base `keras.Model` arguments (e.g. `name`, `dtype`).

    Inputs are NHWC images, uint8 in [0, 255] or floating in [0, 1], with the
    configuration's `image_shape`. The model applies bit reduction
    (`num_x_bits`) and padding (`pad_to`) itself.

    Example:
    ```python
    model = keras_nvae.NVAE.from_preset("cifar10")
    model.compile()
    model.fit(train_ds, validation_data=test_ds, epochs=400)
    images = model.sample(16, temperature=0.7)
    ```
    """

    def __init__(self, config=None, **kwargs):
        super().__init__(**kwargs)
        if config is None:
            config = NVAEConfig()
        elif isinstance(config, dict):
            config = NVAEConfig.from_dict(config)
        elif not isinstance(config, NVAEConfig):
            raise ValueError(
                f"`config` must be an NVAEConfig or a dict, got {type(config).__name__}."
            )
        self.config = config
        c = config
        arch = c.architecture
        self.seed_generator = keras.random.SeedGenerator(0, name="noise_seed")

        # === Bottom-up (encoder) ===
        self.stem = Conv2D(c.num_channels_enc, 3, use_bias=True, name="stem")
        mult = 1
        self.pre_process = []
        for block in range(c.num_preprocess_blocks):
            for cell in range(c.num_preprocess_cells):
                if cell == c.num_preprocess_cells - 1:
                    filters = int(CHANNEL_MULT * c.num_channels_enc * mult)
                    cell_type = "down_pre"
                    mult *= CHANNEL_MULT
                else:
                    filters = int(c.num_channels_enc * mult)
                    cell_type = "normal_pre"
                self.pre_process.append(
                    ResidualCell(
                        filters,
                        cell_type,
                        arch[cell_type],
                        c.use_se,
                        c.remat,
                        name=f"pre_process_{len(self.pre_process)}",
                    )
                )
        self.enc_tower = []
        groups = c.groups_per_scale
        for scale in range(c.num_latent_scales):
            for group in range(groups[scale]):
                for _ in range(c.num_cell_per_cond_enc):
                    self.enc_tower.append(
                        ResidualCell(
                            int(c.num_channels_enc * mult),
                            "normal_enc",
                            arch["normal_enc"],
                            c.use_se,
                            c.remat,
                            name=f"enc_tower_{len(self.enc_tower)}",
                        )
                    )
                if not (scale == c.num_latent_scales - 1 and group == groups[scale] - 1):
                    self.enc_tower.append(
                        EncoderCombiner(
                            int(c.num_channels_enc * mult),
                            name=f"enc_tower_{len(self.enc_tower)}",
                        )
                    )
            if scale < c.num_latent_scales - 1:
                self.enc_tower.append(
                    ResidualCell(
                        int(CHANNEL_MULT * c.num_channels_enc * mult),
                        "down_enc",
                        arch["down_enc"],
                        c.use_se,
                        c.remat,
                        name=f"enc_tower_{len(self.enc_tower)}",
                    )
                )
                mult *= CHANNEL_MULT
        self.top_mult = mult
        self.enc0 = Conv2D(
            int(c.num_channels_enc * mult), 1, use_bias=True, name="enc0"
        )

        # === Latent samplers and flows (decoder order) ===
        self.enc_sampler, self.dec_sampler, self.nf_cells = [], [], []
        for scale in range(c.num_latent_scales):
            for group in range(c.decoder_groups_per_scale[scale]):
                index = len(self.enc_sampler)
                self.enc_sampler.append(
                    Conv2D(
                        2 * c.num_latent_per_group,
                        3,
                        use_bias=True,
                        name=f"enc_sampler_{index}",
                    )
                )
                for flow in range(c.num_flows):
                    self.nf_cells.append(
                        PairedIAFCell(name=f"nf_cells_{len(self.nf_cells)}")
                    )
                if index > 0:
                    self.dec_sampler.append(
                        Conv2D(
                            2 * c.num_latent_per_group,
                            1,
                            use_bias=True,
                            name=f"dec_sampler_{index - 1}",
                        )
                    )
            mult /= CHANNEL_MULT

        # === Top-down (decoder) ===
        mult = self.top_mult
        self.dec_tower = []
        for scale in range(c.num_latent_scales):
            for group in range(c.decoder_groups_per_scale[scale]):
                filters = int(c.num_channels_dec * mult)
                if not (scale == 0 and group == 0):
                    for _ in range(c.num_cell_per_cond_dec):
                        self.dec_tower.append(
                            ResidualCell(
                                filters,
                                "normal_dec",
                                arch["normal_dec"],
                                c.use_se,
                                c.remat,
                                name=f"dec_tower_{len(self.dec_tower)}",
                            )
                        )
                self.dec_tower.append(
                    DecoderCombiner(filters, name=f"dec_tower_{len(self.dec_tower)}")
                )
            if scale < c.num_latent_scales - 1:
                self.dec_tower.append(
                    ResidualCell(
                        int(c.num_channels_dec * mult / CHANNEL_MULT),
                        "up_dec",
                        arch["up_dec"],
                        c.use_se,
                        c.remat,
                        name=f"dec_tower_{len(self.dec_tower)}",
                    )
                )
                mult /= CHANNEL_MULT
        self.post_process = []
        for block in range(c.num_postprocess_blocks):
            for cell in range(c.num_postprocess_cells):
                if cell == 0:
                    filters = int(c.num_channels_dec * mult / CHANNEL_MULT)
                    cell_type = "up_post"
                    mult /= CHANNEL_MULT
                else:
                    filters = int(c.num_channels_dec * mult)
                    cell_type = "normal_post"
                self.post_process.append(
                    ResidualCell(
                        filters,
                        cell_type,
                        arch[cell_type],
                        c.use_se,
                        c.remat,
                        name=f"post_process_{len(self.post_process)}",
                    )
                )
        self.image_conditional = Conv2D(
            distributions.decoder_num_channels(
                c.likelihood, c.num_channels, c.num_mixtures
            ),
            3,
            use_bias=True,
            name="image_conditional",
        )

        # === Objective state ===
        self.spectral_regularizer = objectives.SpectralRegularizer(
            name="spectral_regularizer"
        )
        self.kl_alphas = objectives.kl_balancing_alphas(c.groups_per_scale)
        self._trackers = {
            name: keras.metrics.Mean(name=name)
            for name in (
                "loss",
                "nelbo",
                "recon",
                "kl",
                "bpd",
                "kl_coeff",
                "spectral",
                "bn_reg",
                "active_groups",
            )
        }
        self._default_optimizer_pending = False
        self.build((None,) + tuple(c.image_shape))

    # ------------------------------------------------------------------ build
    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if tuple(input_shape[1:]) != tuple(self.config.image_shape):
            raise ValueError(
                f"NVAE.build: input shape {input_shape} does not match the "
                f"configuration's image_shape {self.config.image_shape}."
            )
        if self.built:
            return
        c = self.config
        top = self.config.latent_shapes[0]
        self.prior_ftr0 = self.add_weight(
            name="prior_ftr0",
            shape=(top[0], top[1], int(c.num_channels_dec * self.top_mult)),
            initializer=keras.initializers.RandomUniform(0.0, 1.0),
        )
        self.global_step = self.add_weight(
            name="global_step",
            shape=(),
            dtype="int64",
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
        )
        self.total_steps = self.add_weight(
            name="total_steps",
            shape=(),
            dtype="int64",
            initializer=keras.initializers.Constant(1),
            trainable=False,
        )
        size = c.model_image_size
        x = tf.zeros((1, size, size, c.num_channels))
        noise = [tf.zeros((1,) + tuple(s)) for s in c.latent_shapes]
        self._network(x, training=False, noise=noise)
        self._conv_layers = [
            layer for layer in self._flatten_layers() if isinstance(layer, Conv2D)
        ]
        self._bn_layers = [
            layer for layer in self._flatten_layers() if isinstance(layer, BatchNorm)
        ]
        self.spectral_regularizer.build(
            [tuple(conv.spectral_matrix().shape) for conv in self._conv_layers]
        )
        self.built = True

    # ---------------------------------------------------------------- presets
    @_ClassProperty
    def presets(cls):
        """{name: description} of the built-in presets."""
        return presets_lib.preset_descriptions()

    @classmethod
    def from_preset(cls, preset, **overrides):
        """Build an NVAE from a built-in preset name, with config overrides.

        Args:
            preset: one of `NVAE.presets`.
            **overrides: `NVAEConfig` fields to change.

        Returns:
            An untrained `NVAE`.
        """
        return cls(presets_lib.preset_config(preset, **overrides))

    def get_config(self):
        config = super().get_config()
        config.update({"config": self.config.to_dict()})
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(**config)

    # -------------------------------------------------------------- geometry
    @property
    def latent_shapes(self):
        """[(h, w, c)] of every latent group, decoder order (top group first)."""
        return self.config.latent_shapes

    @property
    def num_groups(self):
        return self.config.num_groups

    # ---------------------------------------------------------------- inputs
    def preprocess_images(self, images):
        """Validate images and map them to what the network sees.

        Args:
            images: NHWC, uint8 in [0, 255] or floating in [0, 1], shaped like the
                configuration's `image_shape`.

        Returns:
            (x, target): float32 [0, 1] images bit-reduced to `num_x_bits`; `x`
            padded to `pad_to` (the network input), `target` unpadded (what the
            likelihood scores).

        Raises:
            ValueError: wrong rank, shape, dtype or value range.
        """
        c = self.config
        dtype = tf.as_dtype(images.dtype) if hasattr(images, "dtype") else None
        if dtype is None or not (dtype == tf.uint8 or dtype.is_floating):
            raise ValueError(
                "NVAE expects images as uint8 [0, 255] or float [0, 1]; got dtype "
                f"{dtype.name if dtype is not None else type(images).__name__}. "
                "Cast integer images to uint8 (or divide by 255 to get floats)."
            )
        shape = tuple(images.shape)
        if len(shape) != 4 or tuple(shape[1:]) != tuple(c.image_shape):
            raise ValueError(
                f"NVAE expects NHWC images of shape (batch, {', '.join(map(str, c.image_shape))}); "
                f"got shape {shape}. Resize/convert your images, or build the model "
                "with a matching image_shape."
            )
        if not tf.is_symbolic_tensor(images) and tf.executing_eagerly():
            values = np.asarray(images)
            if dtype.is_floating and values.size and (
                not np.all(np.isfinite(values))
                or values.min() < 0.0
                or values.max() > 1.0
            ):
                raise ValueError(
                    "NVAE expects float images in [0, 1]; got values in "
                    f"[{values.min():.4g}, {values.max():.4g}]. Divide 8-bit images by "
                    "255 (or pass them as uint8)."
                )
            if c.likelihood == "bernoulli" and values.size:
                binary = values if dtype.is_floating else values / 255.0
                if not np.all((binary == 0) | (binary == 1)):
                    raise ValueError(
                        "This NVAE uses a Bernoulli likelihood and expects binary "
                        "images (0/1 floats or 0/255 uint8); binarise them first, "
                        "e.g. with keras_nvae.data.dynamic_binarize."
                    )
        x = tf.cast(images, tf.float32)
        if dtype == tf.uint8:
            x = x / 255.0
        x = distributions.reduce_bits(x, c.num_x_bits)
        target = x
        if c.pad_to is not None and c.pad_to != c.image_shape[0]:
            p = (c.pad_to - c.image_shape[0]) // 2
            x = tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])
        return x, target

    def _crop(self, tensor):
        c = self.config
        if c.pad_to is None or c.pad_to == c.image_shape[0]:
            return tensor
        p = (c.pad_to - c.image_shape[0]) // 2
        return tensor[:, p : p + c.image_shape[0], p : p + c.image_shape[1], :]

    def _check_noise(self, noise, batch_size=None):
        shapes = self.latent_shapes
        if len(noise) != len(shapes):
            raise ValueError(
                f"`noise` must be a list of {len(shapes)} tensors (one per latent "
                f"group, decoder order), got {len(noise)}."
            )
        checked = []
        for i, (eps, shape) in enumerate(zip(noise, shapes)):
            eps = tf.convert_to_tensor(eps, tf.float32)
            if tuple(eps.shape[1:]) != tuple(shape) or (
                batch_size is not None
                and eps.shape[0] is not None
                and isinstance(batch_size, int)
                and eps.shape[0] != batch_size
            ):
                raise ValueError(
                    f"noise[{i}] must have shape (batch, {', '.join(map(str, shape))}), "
                    f"got {tuple(eps.shape)}."
                )
            checked.append(eps)
        return checked

    def _standard_normal(self, batch_size, shape, seed=None):
        """Standard-normal noise (batch_size may be a tensor).

        seed: None (draw from the model's seed generator), a
        `keras.random.SeedGenerator`, or a tuple of two ints for a fixed draw.
        """
        if seed is None:
            seed = tf.cast(self.seed_generator.next(), tf.int32)
        elif isinstance(seed, keras.random.SeedGenerator):
            seed = tf.cast(seed.next(), tf.int32)
        else:
            seed = tf.constant(seed, tf.int32)
        full_shape = tf.concat([tf.reshape(batch_size, (1,)), tuple(shape)], axis=0)
        return tf.random.stateless_normal(full_shape, seed=seed)

    # ---------------------------------------------------------------- network
    def _bottom_up(self, x, training):
        s = self.stem(2.0 * x - 1.0)
        for cell in self.pre_process:
            s = cell(s, training=training)
        combiners, features = [], []
        for cell in self.enc_tower:
            if isinstance(cell, EncoderCombiner):
                combiners.append(cell)
                features.append(s)
            else:
                s = cell(s, training=training)
        return s, combiners[::-1], features[::-1]

    def _flow(self, group, z):
        """Apply the group's IAF flows; returns (z, per-image log-determinant)."""
        c = self.config
        log_det = tf.zeros(tf.shape(z)[:1])
        for cell in self.nf_cells[group * c.num_flows : (group + 1) * c.num_flows]:
            bijector = cell.bijector()
            log_det += bijector.forward_log_det_jacobian(z, event_ndims=3)
            z = bijector.forward(z)
        return z, log_det

    def _latent_group(self, group, q, prior_fn, eps):
        """Sample a group's posterior (z = mu + sigma * eps, then flows).

        Returns z and per-image log q(z|x), log p(z) and KL. The KL is analytic
        without flows and the one-sample estimate log q - log p with flows.
        """
        z0 = q.loc + q.scale * eps
        log_q = tf.reduce_sum(q.log_prob(z0), axis=(1, 2, 3))
        z, log_det = self._flow(group, z0)
        log_q -= log_det
        p = prior_fn(z)
        log_p = tf.reduce_sum(p.log_prob(z), axis=(1, 2, 3))
        if self.config.num_flows:
            kl = log_q - log_p
        else:
            kl = tf.reduce_sum(q.kl_divergence(p), axis=(1, 2, 3))
        return z, log_q, log_p, kl

    def _network(self, x, training, noise=None):
        """The full forward pass; returns decoder params and per-group terms."""
        c = self.config
        batch_size = tf.shape(x)[0]
        top, enc_combiners, enc_features = self._bottom_up(x, training)
        terms = {"log_q": [], "log_p": [], "kl": [], "latents": []}

        def posterior_latent(group, s):
            if group == 0:
                # The top group's posterior is absolute; its prior is N(0, 1.01).
                ftr = tf.nn.elu(self.enc0(tf.nn.elu(top)))
                q = distributions.normal_from_params(
                    *distributions.split_normal_params(
                        tf.cast(self.enc_sampler[0](ftr), tf.float32)
                    )
                )
                prior_fn = distributions.standard_normal_prior
            else:
                mu_p, log_sigma_p = distributions.split_normal_params(
                    tf.cast(self.dec_sampler[group - 1](tf.nn.elu(s)), tf.float32)
                )
                ftr = enc_combiners[group - 1](enc_features[group - 1], s)
                mu_q, log_sigma_q = distributions.split_normal_params(
                    tf.cast(self.enc_sampler[group](ftr), tf.float32)
                )
                if c.res_dist:
                    q = distributions.residual_normal(mu_p, log_sigma_p, mu_q, log_sigma_q)
                else:
                    q = distributions.normal_from_params(mu_q, log_sigma_q)

                def prior_fn(_):
                    return distributions.normal_from_params(mu_p, log_sigma_p)

            if noise is not None:
                eps = noise[group]
            else:
                eps = self._standard_normal(batch_size, self.latent_shapes[group])
            z, log_q, log_p, kl = self._latent_group(group, q, prior_fn, eps)
            for key, value in zip(terms, (log_q, log_p, kl, z)):
                terms[key].append(value)
            return z

        logits = self._top_down(batch_size, posterior_latent, training=training)
        return {
            "logits": logits,
            "log_q": tf.add_n(terms["log_q"]),
            "log_p": tf.add_n(terms["log_p"]),
            "kl": tf.stack(terms["kl"], axis=1),
            "latents": terms["latents"],
        }

    def decoder_distribution(self, logits):
        """The likelihood p(x|z) for decoder parameters `logits` (NHWC)."""
        c = self.config
        return distributions.make_decoder_distribution(
            c.likelihood,
            self._crop(logits),
            num_channels=c.num_channels,
            num_mixtures=c.num_mixtures,
            num_bits=c.num_x_bits,
            official_edges=c.official_dmol,
            official_temperature=c.official_dmol,
        )

    def call(self, inputs, training=None, noise=None):
        """Forward pass.

        Args:
            inputs: NHWC images (uint8 [0, 255] or float [0, 1]).
            training: BN in batch-statistics mode when True.
            noise: None, or one standard-normal tensor per latent group
                (decoder order), shaped like `latent_shapes` with a batch axis.

        Returns:
            dict with "logits" (decoder parameters, NHWC, padded size), "log_q"
            and "log_p" (batch,), "kl" (batch, groups), "recon_nll" (batch,) in
            nats, and "latents" (the posterior samples, decoder order).
        """
        x, target = self.preprocess_images(inputs)
        if noise is not None:
            noise = self._check_noise(noise)
        out = self._network(x, training=training, noise=noise)
        out["recon_nll"] = -self.decoder_distribution(out["logits"]).log_prob(target)
        return out

    def compute_output_spec(self, inputs, training=None, noise=None):
        c = self.config
        batch = inputs.shape[0]
        size = c.model_image_size
        spec = keras.KerasTensor
        return {
            "logits": spec(
                (batch, size, size, self.image_conditional.filters), "float32"
            ),
            "log_q": spec((batch,), "float32"),
            "log_p": spec((batch,), "float32"),
            "kl": spec((batch, c.num_groups), "float32"),
            "recon_nll": spec((batch,), "float32"),
            "latents": [spec((batch,) + tuple(s), "float32") for s in self.latent_shapes],
        }

    # ------------------------------------------------------------- inference
    def _top_down(self, batch_size, latent_fn, training=False):
        """Run the decoder, taking each group's z from `latent_fn(group, s)`."""
        prior = tf.cast(self.prior_ftr0, self.compute_dtype)
        s = tf.tile(prior[None], [batch_size, 1, 1, 1])
        group = 0
        for cell in self.dec_tower:
            if isinstance(cell, DecoderCombiner):
                s = cell(s, latent_fn(group, s))
                group += 1
            else:
                s = cell(s, training=training)
        for cell in self.post_process:
            s = cell(s, training=training)
        return tf.cast(self.image_conditional(tf.nn.elu(s)), tf.float32)

    def _images_from_logits(self, logits, output, temperature=1.0, seed=None):
        dist = self.decoder_distribution(logits)
        if output == "mean":
            return dist.mean()
        if output == "sample":
            if self.config.likelihood == "dmol":
                return dist.sample_with_temperature(
                    temperature, seed=self._stateless_seed(seed)
                )
            return dist.sample(seed=self._stateless_seed(seed))
        raise ValueError(f"`output` must be 'mean' or 'sample', got {output!r}.")

    def _stateless_seed(self, seed):
        if seed is None:
            return tf.cast(self.seed_generator.next(), tf.int32)
        return tf.constant([int(seed), 0], tf.int32)

    def sample(
        self,
        num_samples,
        temperature=0.7,
        noise=None,
        seed=None,
        return_logits=False,
        output="mean",
    ):
        """Draw images from the prior.

        Args:
            num_samples: int.
            temperature: scales the standard deviation of every prior group
                (the top prior included), as in the paper.
            noise: optional list of standard-normal tensors, one per group
                (decoder order); z = mu + sigma * temperature * noise.
            seed: optional int for reproducible samples.
            return_logits: also return the decoder parameters.
            output: "mean" (decoder mean, the official choice for FID) or
                "sample" (sample the pixels too).

        Returns:
            float32 images in [0, 1], NHWC (and the logits if requested).
        """
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"`num_samples` must be a positive int, got {num_samples!r}.")
        if not float(temperature) > 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature!r}.")
        if noise is not None:
            noise = self._check_noise(noise, num_samples)
        logits = self.prior_logits(num_samples, temperature, noise=noise, seed=seed)
        images = self._images_from_logits(logits, output, seed=seed)
        return (images, logits) if return_logits else images

    def prior_logits(self, num_samples, temperature, noise=None, seed=None, training=False):
        """Decoder parameters of samples from the prior (graph-friendly).

        `num_samples` and `temperature` may be tensors (used by the exported
        SavedModel); `seed` may also be a `keras.random.SeedGenerator`; see
        `sample` for the other arguments. `training=True` runs BN in
        batch-statistics mode (BN re-adjustment).
        """
        def latent_fn(group, s):
            if noise is not None:
                eps = noise[group]
            else:
                if seed is None or isinstance(seed, keras.random.SeedGenerator):
                    group_seed = seed
                else:
                    group_seed = (int(seed), group)
                eps = self._standard_normal(
                    num_samples, self.latent_shapes[group], seed=group_seed
                )
            if group == 0:
                dist = distributions.standard_normal_prior(eps, temperature)
            else:
                mu, log_sigma = distributions.split_normal_params(
                    tf.cast(self.dec_sampler[group - 1](tf.nn.elu(s)), tf.float32)
                )
                dist = distributions.normal_from_params(mu, log_sigma, temperature)
            return dist.loc + dist.scale * eps

        return self._top_down(num_samples, latent_fn, training=training)

    def encode(self, images, noise=None):
        """Posterior samples of every latent group (decoder order, post-flow).

        Args:
            images: NHWC images.
            noise: optional per-group standard-normal noise; pass zeros to get
                the posterior means (before flows).

        Returns:
            A list of (batch, h, w, c) tensors, shaped like `latent_shapes`.
        """
        return self(images, training=False, noise=noise)["latents"]

    def decode(self, latents, output="mean", seed=None):
        """Decode given latents (one tensor per group, decoder order) to images."""
        latents = self._check_noise(latents)
        logits = self._top_down(tf.shape(latents[0])[0], lambda g, s: latents[g])
        return self._images_from_logits(logits, output, seed=seed)

    def reconstruct(self, images, output="mean", noise=None, seed=None):
        """Encode then decode `images`; returns float [0, 1] NHWC images."""
        logits = self(images, training=False, noise=noise)["logits"]
        return self._images_from_logits(logits, output, seed=seed)

    def log_likelihood(self, images, num_samples=100):
        """Importance-weighted log p(x) in nats per image (BN in eval mode).

        `logsumexp_k(log p(x|z_k) + log p(z_k) - log q(z_k|x)) - log K`.

        Args:
            images: NHWC images.
            num_samples: K, the number of importance samples.

        Returns:
            (batch,) float32 tensor of log-likelihoods in nats.
        """
        num_samples = int(num_samples)
        if num_samples < 1:
            raise ValueError(f"`num_samples` must be >= 1, got {num_samples}.")
        x, target = self.preprocess_images(images)

        def body(k, total):
            out = self._network(x, training=False)
            log_p_x = self.decoder_distribution(out["logits"]).log_prob(target)
            log_weight = log_p_x - out["log_q"] + out["log_p"]
            return k + 1, tf.reduce_logsumexp(tf.stack([total, log_weight]), axis=0)

        initial = tf.fill(tf.shape(x)[:1], -float("inf"))
        # A while loop (not a Python loop) keeps the graph small for any K.
        _, total = tf.while_loop(
            lambda k, _: k < num_samples, body, (tf.constant(0), initial)
        )
        return total - math.log(num_samples)

    def export(self, filepath, format="tf_saved_model", verbose=True, **kwargs):
        """Export a SavedModel with `sample` (serving default), `reconstruct`,
        `encode` and `log_likelihood` endpoints; see
        `keras_nvae.export.export_saved_model` for the signatures."""
        from keras_nvae import export as export_lib

        if format != "tf_saved_model":
            raise ValueError(
                f"NVAE.export supports format='tf_saved_model' only, got {format!r}."
            )
        return export_lib.export_saved_model(self, filepath, verbose=verbose, **kwargs)

    # ---------------------------------------------------------------- training
    @property
    def metrics(self):
        return list(self._trackers.values())

    def compile(
        self,
        optimizer=None,
        total_steps=None,
        steps_per_epoch=None,
        jit_compile="auto",
        **kwargs,
    ):
        """Configure training.

        Args:
            optimizer: None for the preset's optimiser (PyTorch-semantics Adamax
                with eps 1e-3 and coupled L2 weight decay, linear warm-up then
                cosine decay), or any Keras optimizer.
            total_steps: steps the schedules span (learning-rate warm-up and
                cosine, KL warm-up, lambda annealing). Default: fit's
                `epochs * steps_per_epoch`, resolved when `fit` starts.
            steps_per_epoch: steps per epoch; with it the learning-rate cosine
                is stepped per epoch, as in the official code.
            jit_compile: passed to `keras.Model.compile`.
            **kwargs: other `keras.Model.compile` arguments.
        """
        self._compile_total_steps = total_steps
        self._compile_steps_per_epoch = steps_per_epoch
        if total_steps is not None:
            self.total_steps.assign(int(total_steps))
        if optimizer is None:
            if total_steps is None:
                self._default_optimizer_pending = True
                self._pending_compile_kwargs = dict(jit_compile=jit_compile, **kwargs)
                optimizer = self._default_optimizer(1, steps_per_epoch)
            else:
                self._default_optimizer_pending = False
                optimizer = self._default_optimizer(total_steps, steps_per_epoch)
        else:
            self._default_optimizer_pending = False
        if keras.mixed_precision.global_policy().name == "mixed_float16" and not isinstance(
            optimizer, keras.optimizers.LossScaleOptimizer
        ):
            # The official code starts its gradient scaler at 2**10 (Keras: 2**15).
            optimizer = keras.optimizers.LossScaleOptimizer(
                keras.optimizers.get(optimizer), initial_scale=2.0**10
            )
        super().compile(optimizer=optimizer, jit_compile=jit_compile, **kwargs)

    def get_compile_config(self):
        if not self.compiled:
            return None
        return {
            "optimizer": keras.saving.serialize_keras_object(self.optimizer),
            "total_steps": int(keras.ops.convert_to_numpy(self.total_steps)),
            "steps_per_epoch": self._compile_steps_per_epoch,
            "jit_compile": self.jit_compile,
        }

    def compile_from_config(self, config):
        config = dict(config)
        optimizer = keras.saving.deserialize_keras_object(config.pop("optimizer"))
        self.compile(optimizer=optimizer, **config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def _default_optimizer(self, total_steps, steps_per_epoch):
        c = self.config
        total_steps = max(int(total_steps), 1)
        if steps_per_epoch:
            warmup = int(c.warmup_epochs * steps_per_epoch)
        else:
            warmup = int(round(total_steps * c.warmup_epochs / c.epochs))
        schedule = nvae_optimizers.WarmupCosineSchedule(
            peak_learning_rate=c.learning_rate,
            min_learning_rate=c.learning_rate_min,
            warmup_steps=min(warmup, total_steps),
            total_steps=total_steps,
            steps_per_epoch=steps_per_epoch,
        )
        return nvae_optimizers.NVAEAdamax(
            learning_rate=schedule, l2_weight_decay=c.weight_decay
        )

    def fit(self, x=None, y=None, epochs=1, steps_per_epoch=None, **kwargs):
        if getattr(self, "_default_optimizer_pending", False):
            per_epoch = steps_per_epoch
            if per_epoch is None and isinstance(x, tf.data.Dataset):
                cardinality = int(x.cardinality())
                if cardinality > 0:
                    per_epoch = cardinality
            if per_epoch is None and hasattr(x, "shape"):
                batch = kwargs.get("batch_size") or 32
                per_epoch = int(math.ceil(x.shape[0] / batch))
            if per_epoch is None:
                raise ValueError(
                    "NVAE.fit could not infer the number of steps per epoch (an "
                    "infinite or unknown-size dataset). Pass `steps_per_epoch` to fit, "
                    "or `total_steps` to compile."
                )
            total = int(epochs) * int(per_epoch)
            self.compile(
                total_steps=total,
                steps_per_epoch=self._compile_steps_per_epoch,
                **self._pending_compile_kwargs,
            )
        return super().fit(x, y, epochs=epochs, steps_per_epoch=steps_per_epoch, **kwargs)

    def kl_coefficient(self, step=None):
        """KL warm-up coefficient beta at `step` (default: the current step)."""
        c = self.config
        step = self.global_step if step is None else step
        return objectives.kl_warmup_coefficient(
            step,
            self.total_steps,
            anneal_portion=c.kl_anneal_portion,
            const_portion=c.kl_const_portion,
            min_coeff=c.kl_const_coeff,
        )

    def regularization_terms(self, training=True):
        """(spectral, bn) regulariser values: sum of largest singular values of
        every convolution kernel (power iteration) and sum of max |gamma| of
        every BN layer."""
        spectral = self.spectral_regularizer(
            spectral_matrices(self._conv_layers), training=training
        )
        bn = objectives.batchnorm_regularizer([bn.gamma for bn in self._bn_layers])
        return spectral, bn

    def compute_objective(self, images, training=True, noise=None):
        """All terms of the training objective for one batch (nats per image).

        Returns:
            dict with "loss" (what is minimised), "nelbo", "recon", "kl",
            "kl_coeff", "spectral", "bn_reg", "reg_coeff", "kl_per_group".
        """
        c = self.config
        out = self(images, training=training, noise=noise)
        beta = self.kl_coefficient()
        balanced_kl, coeffs = objectives.balance_kl(
            out["kl"], beta, self.kl_alphas, balance=c.kl_balance
        )
        objective = tf.reduce_mean(out["recon_nll"] + balanced_kl)
        spectral, bn_reg = self.regularization_terms(training=training)
        reg_coeff = objectives.regularization_coefficient(
            beta,
            c.weight_decay_norm,
            c.weight_decay_norm_init,
            anneal=c.weight_decay_norm_anneal,
        )
        if c.weight_decay_norm > 0:
            objective = objective + reg_coeff * (spectral + bn_reg)
        kl = tf.reduce_sum(out["kl"], axis=1)
        return {
            "loss": objective,
            "nelbo": tf.reduce_mean(out["recon_nll"] + kl),
            "recon": tf.reduce_mean(out["recon_nll"]),
            "kl": tf.reduce_mean(kl),
            "kl_coeff": beta,
            "spectral": spectral,
            "bn_reg": bn_reg,
            "reg_coeff": reg_coeff,
            "kl_per_group": out["kl"],
            "kl_coeffs": coeffs,
        }

    def _active_groups(self, kl_per_group):
        # A group is active when its batch-mean KL per latent channel exceeds 0.1.
        per_channel = tf.reduce_mean(kl_per_group, axis=0) / self.config.num_latent_per_group
        return tf.reduce_sum(tf.cast(per_channel > 0.1, tf.float32))

    def _update_trackers(self, values, batch_size):
        # Weighted by the batch size so epoch means are per image even when the
        # last batch is smaller.
        weight = tf.cast(batch_size, tf.float32)
        for name, tracker in self._trackers.items():
            if name in values:
                tracker.update_state(values[name], sample_weight=weight)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # NVAE is built when it is constructed, so only the optimizer is left to
        # build. Keras' own version also all-reduces the first (uint8) batch,
        # which fails under MultiWorkerMirroredStrategy (Keras 3.15).
        if self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)

    def _logs(self, values):
        logs = {name: self._trackers[name].result() for name in values}
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # Keras reduces step outputs along axis 0, which scalars lack under
            # MultiWorkerMirroredStrategy (Keras 3.15); the reduction of
            # shape-(1,) values gives back scalars.
            logs = {name: tf.reshape(value, (1,)) for name, value in logs.items()}
        return logs

    def train_step(self, data):
        images = _unpack_images(data)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        variables = self.trainable_variables
        with tf.GradientTape() as tape:
            terms = self.compute_objective(images, training=True)
            loss = terms["loss"] / replicas
            scaled = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply(grads, variables)
        self.global_step.assign_add(1)
        terms["bpd"] = distributions.nats_to_bits_per_dim(
            terms["nelbo"], self.config.num_dims
        )
        terms["active_groups"] = self._active_groups(terms["kl_per_group"])
        self._update_trackers(terms, tf.shape(images)[0])
        return self._logs(self._trackers)

    def test_step(self, data):
        images = _unpack_images(data)
        out = self(images, training=False)
        nelbo = out["recon_nll"] + tf.reduce_sum(out["kl"], axis=1)
        values = {
            "loss": tf.reduce_mean(nelbo),
            "nelbo": tf.reduce_mean(nelbo),
            "recon": tf.reduce_mean(out["recon_nll"]),
            "kl": tf.reduce_mean(tf.reduce_sum(out["kl"], axis=1)),
            "bpd": distributions.nats_to_bits_per_dim(
                tf.reduce_mean(nelbo), self.config.num_dims
            ),
            "active_groups": self._active_groups(out["kl"]),
        }
        self._update_trackers(values, tf.shape(images)[0])
        return self._logs(values)
