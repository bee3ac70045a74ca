"""The NVAE network: towers, latent groups and the inference API."""

import math

import keras
import tensorflow as tf

from keras_nvae import distributions
from keras_nvae import inputs as inputs_lib
from keras_nvae import latents as latents_lib
from keras_nvae import noise as noise_lib
from keras_nvae.config import NVAEConfig
from keras_nvae.layers.conv import Conv2D
from keras_nvae.layers.latent_group import LatentGroup
from keras_nvae.layers.residual_cell import ResidualCell

CHANNEL_MULT = 2


class NVAENetwork(keras.Model):
    """The NVAE network and its inference API (no training policy).

    Bottom-up: a stem, the pre-processing cells, then the latent groups'
    encoder cells from the highest resolution up, with a down-sampling cell
    between scales. Top-down: a learned constant, then per group its decoder
    cells, a latent sample (posterior or prior) fed in by the group's
    combiner, with an up-sampling cell between scales; then the
    post-processing cells and the image-conditional convolution that gives
    the decoder distribution's parameters. `keras_nvae.NVAE` adds training.

    Args:
        config: an `NVAEConfig`, or a dict of its fields.
        **kwargs: base `keras.Model` arguments (e.g. `name`, `dtype`).
    """

    def __init__(self, config=None, **kwargs):
        super().__init__(**kwargs)
        self.config = _as_config(config)
        c = self.config
        # Seeded from keras.utils.set_random_seed (see keras_nvae.noise).
        self.seed_generator = keras.random.SeedGenerator(name="noise_seed")
        self.stem = Conv2D(c.num_channels_enc, 3, use_bias=True, name="stem")
        self.pre_process = self._pre_process_cells()
        self.encoder_down_cells = [
            self._cell(
                CHANNEL_MULT * c.num_channels_enc * self._encoder_mult(scale),
                "down_enc",
                f"encoder_down_{scale}",
            )
            for scale in range(c.num_latent_scales - 1)
        ]
        self.groups = self._latent_groups()
        self.decoder_up_cells = [
            self._cell(
                c.num_channels_dec * self._decoder_mult(scale) // CHANNEL_MULT,
                "up_dec",
                f"decoder_up_{scale}",
            )
            for scale in range(c.num_latent_scales - 1)
        ]
        self.post_process = self._post_process_cells()
        self.image_conditional = Conv2D(
            distributions.decoder_num_channels(c.likelihood, c.num_channels, c.num_mixtures),
            3,
            use_bias=True,
            name="image_conditional",
        )

    # --------------------------------------------------------- construction
    def _cell(self, filters, cell_type, name):
        c = self.config
        return ResidualCell(
            filters, cell_type, c.architecture[cell_type], c.use_se, c.remat, name=name
        )

    def _encoder_mult(self, scale):
        """Channel multiplier of encoder scale `scale` (0: highest resolution)."""
        return CHANNEL_MULT ** (self.config.num_preprocess_blocks + scale)

    def _decoder_mult(self, scale):
        """Channel multiplier of decoder scale `scale` (0: the top scale)."""
        return self._encoder_mult(self.config.num_latent_scales - 1 - scale)

    def _pre_process_cells(self):
        c = self.config
        cells = []
        for block in range(c.num_preprocess_blocks):
            mult = CHANNEL_MULT**block
            for cell in range(c.num_preprocess_cells):
                if cell == c.num_preprocess_cells - 1:
                    filters, cell_type = CHANNEL_MULT * c.num_channels_enc * mult, "down_pre"
                else:
                    filters, cell_type = c.num_channels_enc * mult, "normal_pre"
                cells.append(self._cell(filters, cell_type, f"pre_process_{len(cells)}"))
        return cells

    def _post_process_cells(self):
        c = self.config
        cells = []
        for block in range(c.num_postprocess_blocks):
            mult = CHANNEL_MULT ** (c.num_postprocess_blocks - block)
            for cell in range(c.num_postprocess_cells):
                filters = c.num_channels_dec * mult // CHANNEL_MULT
                cell_type = "up_post" if cell == 0 else "normal_post"
                cells.append(self._cell(filters, cell_type, f"post_process_{len(cells)}"))
        return cells

    def _latent_groups(self):
        c = self.config
        groups = []
        for scale, num_groups in enumerate(c.decoder_groups_per_scale):
            mult = self._decoder_mult(scale)
            for _ in range(num_groups):
                groups.append(
                    LatentGroup(
                        encoder_filters=c.num_channels_enc * mult,
                        decoder_filters=c.num_channels_dec * mult,
                        num_latents=c.num_latent_per_group,
                        is_top=not groups,
                        num_encoder_cells=c.num_cell_per_cond_enc,
                        num_decoder_cells=c.num_cell_per_cond_dec,
                        encoder_cell_ops=c.architecture["normal_enc"],
                        decoder_cell_ops=c.architecture["normal_dec"],
                        num_flows=c.num_flows,
                        use_se=c.use_se,
                        residual_posterior=c.res_dist,
                        remat=c.remat,
                        name=f"latent_group_{len(groups)}",
                    )
                )
        return groups

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
        top = c.latent_shapes[0]
        self.prior_ftr0 = self.add_weight(
            name="prior_ftr0",
            shape=(top[0], top[1], c.num_channels_dec * self._decoder_mult(0)),
            initializer=keras.initializers.RandomUniform(0.0, 1.0),
        )
        self._build_groups()
        x = tf.zeros((1, c.model_image_size, c.model_image_size, c.num_channels))
        noise = [tf.zeros((1,) + tuple(s)) for s in c.latent_shapes]
        self._forward(x, training=False, noise=noise)
        self.built = True

    def _build_groups(self):
        for (height, width, _), group in zip(self.config.latent_shapes, self.groups):
            group.build((None, height, width, group.decoder_filters))

    def groups_by_scale(self):
        """The latent groups in one list per scale, top scale first."""
        return [[group for _, group in scale] for scale in self._scales()]

    def _scales(self):
        """The latent groups by scale, top scale first, as (index, group) pairs."""
        pairs = iter(enumerate(self.groups))
        return [[next(pairs) for _ in range(n)] for n in self.config.decoder_groups_per_scale]

    def official_modules(self):
        """The layers arranged as the official code's module lists.

        The official model keeps its cells in flat lists (`enc_tower`,
        `dec_tower`, `enc_sampler`, `dec_sampler`, `nf_cells`, ...) whose indices
        name its parameters; `keras_nvae` keeps them per latent group. This
        derives the official lists from the groups and the configuration.

        Returns:
            {official module name: layer, or list of layers in official order}.
        """
        scales = self.groups_by_scale()
        groups = self.groups
        enc_tower = []
        for scale, scale_groups in enumerate(reversed(scales)):
            for group in reversed(scale_groups):
                enc_tower += group.encoder_cells
                if not group.is_top:
                    enc_tower.append(group.posterior_input)
            if scale < len(scales) - 1:
                enc_tower.append(self.encoder_down_cells[scale])
        dec_tower = []
        for scale, scale_groups in enumerate(scales):
            for group in scale_groups:
                dec_tower += group.decoder_cells + [group.combiner]
            if scale < len(scales) - 1:
                dec_tower.append(self.decoder_up_cells[scale])
        return {
            "stem": self.stem,
            "pre_process": list(self.pre_process),
            "enc_tower": enc_tower,
            "enc0": groups[0].posterior_input,
            "enc_sampler": [group.posterior_head for group in groups],
            "dec_sampler": [group.prior_head for group in groups[1:]],
            "nf_cells": [flow for group in groups for flow in group.flows],
            "dec_tower": dec_tower,
            "post_process": list(self.post_process),
            "image_conditional": self.image_conditional,
        }

    def modules_in_official_order(self):
        """`official_modules` flattened, the samplers and flows group by group.

        The order the spectral regulariser keeps its power-iteration state in
        (so that state is the same whatever the Python layout of the layers).
        """
        modules = self.official_modules()
        ordered = [modules["stem"], *modules["pre_process"], *modules["enc_tower"], modules["enc0"]]
        for group in self.groups:
            ordered += [group.posterior_head, *group.flows]
            if group.prior_head is not None:
                ordered.append(group.prior_head)
        ordered += [*modules["dec_tower"], *modules["post_process"], modules["image_conditional"]]
        return ordered

    # -------------------------------------------------------------- geometry
    @property
    def latent_shapes(self):
        """[(h, w, c)] of every latent group, decoder order (top group first)."""
        return self.config.latent_shapes

    @property
    def num_groups(self):
        """Number of latent groups."""
        return self.config.num_groups

    # ------------------------------------------------------------- the towers
    def _bottom_up(self, x, training):
        """The bottom-up feature of every group, decoder order."""
        h = self.stem(2.0 * x - 1.0)
        for cell in self.pre_process:
            h = cell(h, training=training)
        features = []
        for scale, groups in enumerate(reversed(self._scales())):
            if scale:
                h = self.encoder_down_cells[scale - 1](h, training=training)
            for _, group in reversed(groups):
                h = group.encode(h, training=training)
                features.append(h)
        return features[::-1]

    def _top_down(self, batch_size, latent_fn, training=False):
        """Run the decoder; group `index` takes z from `latent_fn(index, group, s)`."""
        prior = tf.cast(self.prior_ftr0, self.compute_dtype)
        s = tf.tile(prior[None], [batch_size, 1, 1, 1])
        for scale, groups in enumerate(self._scales()):
            if scale:
                s = self.decoder_up_cells[scale - 1](s, training=training)
            for index, group in groups:
                s = group.decode(s, training=training)
                s = group.combine(s, latent_fn(index, group, s))
        for cell in self.post_process:
            s = cell(s, training=training)
        return tf.cast(self.image_conditional(tf.nn.elu(s)), tf.float32)

    def _forward(self, x, training, noise=None, seeds=None):
        """The full forward pass; returns decoder params and per-group terms."""
        batch_size = tf.shape(x)[0]
        features = self._bottom_up(x, training)
        terms = {"latents": [], "log_q": [], "log_p": [], "kl": []}
        eps = self._latent_noise(batch_size, noise, seeds)

        def posterior_latent(index, group, s):
            sample = group.sample_posterior(features[index], s, eps(index))
            for key, value in zip(terms, sample):
                terms[key].append(value)
            return sample[0]

        logits = self._top_down(batch_size, posterior_latent, training=training)
        return {
            "logits": logits,
            "log_q": tf.add_n(terms["log_q"]),
            "log_p": tf.add_n(terms["log_p"]),
            "kl": tf.stack(terms["kl"], axis=1),
            "latents": terms["latents"],
        }

    # ------------------------------------------------------------ the model
    def preprocess_images(self, images):
        """Validate images and map them to the network input (see
        `keras_nvae.inputs.preprocess_images`); returns (x, target)."""
        return inputs_lib.preprocess_images(images, self.config)

    def decoder_distribution(self, logits):
        """The likelihood p(x|z) for decoder parameters `logits` (NHWC)."""
        c = self.config
        return distributions.make_decoder_distribution(
            c.likelihood,
            inputs_lib.crop_padding(logits, c),
            num_channels=c.num_channels,
            num_mixtures=c.num_mixtures,
            num_bits=c.num_x_bits,
            official_edges=c.official_dmol,
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
            noise = inputs_lib.check_noise(noise, self.latent_shapes)
        out = self._forward(x, training=training, noise=noise)
        out["recon_nll"] = -self.decoder_distribution(out["logits"]).log_prob(target)
        return out

    def compute_output_spec(self, inputs, training=None, noise=None):
        c = self.config
        batch = inputs.shape[0]
        size = c.model_image_size
        spec = keras.KerasTensor
        return {
            "logits": spec((batch, size, size, self.image_conditional.filters), "float32"),
            "log_q": spec((batch,), "float32"),
            "log_p": spec((batch,), "float32"),
            "kl": spec((batch, c.num_groups), "float32"),
            "recon_nll": spec((batch,), "float32"),
            "latents": [spec((batch,) + tuple(s), "float32") for s in self.latent_shapes],
        }

    # ------------------------------------------------------------ randomness
    def _standard_normal(self, batch_size, shape, seed=None):
        """Standard-normal noise (`batch_size` may be a tensor).

        `seed`: a stateless seed tensor, or None for the model's seed stream
        (see `keras_nvae.noise`).
        """
        if seed is None:
            seed = noise_lib.generator_seed(self.seed_generator)
        full_shape = tf.concat([tf.reshape(batch_size, (1,)), tuple(shape)], axis=0)
        return tf.random.stateless_normal(full_shape, seed=seed)

    def _latent_noise(self, batch_size, noise=None, seeds=None):
        """A function `index -> standard-normal noise of group index`: `noise[index]`
        when given, else a draw seeded by the `keras_nvae.noise.CallSeeds` `seeds`."""
        seeds = seeds or noise_lib.CallSeeds()

        def eps(index):
            if noise is not None:
                return noise[index]
            shape = self.latent_shapes[index]
            return self._standard_normal(batch_size, shape, seeds.latent(index))

        return eps

    # --------------------------------------------------------- inference API
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
            temperature: a float > 0 that scales the standard deviation of
                every prior group (the top prior included), as in the paper,
                or a list of one such float per latent group (decoder order).
            noise: optional list of standard-normal tensors, one per group
                (decoder order); z = mu + sigma * temperature * noise.
            seed: optional int: every random draw of the call (latents and
                pixels) is a function of it.
            return_logits: also return the decoder parameters.
            output: "mean" (decoder mean, the official choice for FID) or
                "sample" (sample the pixels too, at pixel temperature 1 as
                the official evaluation does).

        Returns:
            float32 images in [0, 1], NHWC (and the logits if requested).
        """
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"`num_samples` must be a positive int, got {num_samples!r}.")
        if noise is not None:
            noise = inputs_lib.check_noise(noise, self.latent_shapes, num_samples)
        seeds = noise_lib.CallSeeds(seed)
        logits = self.prior_logits(num_samples, temperature, noise=noise, seed=seeds)
        images = self._images_from_logits(logits, output, seeds)
        return (images, logits) if return_logits else images

    def prior_logits(self, num_samples, temperature, noise=None, seed=None, training=False):
        """Decoder parameters of samples from the prior (graph-friendly).

        `num_samples` and a scalar `temperature` may be tensors (used by the
        exported SavedModel); `seed` may also be a `keras.random.SeedGenerator`
        or a `keras_nvae.noise.CallSeeds`; see `sample` for the other
        arguments. `training=True` runs BN in batch-statistics mode (BN
        re-adjustment).
        """
        temperatures = inputs_lib.check_temperature(temperature, self.num_groups)
        eps = self._latent_noise(num_samples, noise, _call_seeds(seed))
        return self._top_down(
            num_samples,
            lambda index, group, s: group.sample_prior(s, eps(index), temperatures[index]),
            training=training,
        )

    def encode(self, images, noise=None, seed=None):
        """Posterior samples of every latent group (decoder order, post-flow).

        Args:
            images: NHWC images.
            noise: optional per-group standard-normal noise; pass zeros to get
                the posterior means (before flows).
            seed: optional int for reproducible samples.

        Returns:
            A list of (batch, h, w, c) tensors, shaped like `latent_shapes`.
        """
        x, _ = self.preprocess_images(images)
        if noise is not None:
            noise = inputs_lib.check_noise(noise, self.latent_shapes)
        return self._forward(x, False, noise, noise_lib.CallSeeds(seed))["latents"]

    def decode(self, latents, output="mean", seed=None):
        """Decode given latents (one tensor per group, decoder order) to images;
        `seed` (an int) fixes the pixel samples of `output="sample"`."""
        latents = inputs_lib.check_noise(latents, self.latent_shapes)
        logits = self._top_down(tf.shape(latents[0])[0], lambda index, _, s: latents[index])
        return self._images_from_logits(logits, output, noise_lib.CallSeeds(seed))

    def reconstruct(
        self,
        images,
        output="mean",
        noise=None,
        seed=None,
        num_posterior_groups=None,
        temperature=1.0,
    ):
        """Encode then decode `images`, optionally keeping only the top groups.

        The first `num_posterior_groups` groups (decoder order) are sampled
        from the posterior q(z|x), the others from the prior given them, at
        `temperature`: what the hierarchy encodes down to each level. With
        all groups (the default) this is the plain reconstruction; with 0 it
        is a prior sample that does not depend on `images`, the same as
        `sample(len(images), temperature, seed=seed)`.

        Args:
            images: NHWC images.
            output: "mean" or "sample" (see `sample`).
            noise: optional per-group standard-normal noise (posterior noise
                of the first groups, prior noise of the others).
            seed: optional int: every random draw of the call is a function
                of it; group g's noise is the same whether g is taken from
                the posterior or the prior.
            num_posterior_groups: None (all groups) or an int in
                [0, num_groups].
            temperature: prior temperature of the groups not taken from the
                posterior: a float > 0 or a list of one per group (entries of
                posterior groups unused).

        Returns:
            float32 images in [0, 1], NHWC.

        Example:
        ```python
        coarse = model.reconstruct(images, num_posterior_groups=2, temperature=0.7, seed=0)
        ```
        """
        k = inputs_lib.check_num_posterior_groups(num_posterior_groups, self.num_groups)
        temperatures = inputs_lib.check_temperature(temperature, self.num_groups)
        x, _ = self.preprocess_images(images)
        if noise is not None:
            noise = inputs_lib.check_noise(noise, self.latent_shapes)
        seeds = noise_lib.CallSeeds(seed)
        eps = self._latent_noise(tf.shape(x)[0], noise, seeds)
        logits = latents_lib.partial_posterior_logits(self, x, k, temperatures, eps)
        return self._images_from_logits(logits, output, seeds)

    def interpolate(self, x1, x2, num_steps, groups=None, mode="linear", seed=None, output="mean"):
        """Images along latent paths from `x1[i]` to `x2[i]`.

        Both batches are encoded (posterior samples with the same noise as
        `reconstruct(..., seed=seed)`) and every group's sample is
        standardised by its prior, `u = (z - mu_p) / sigma_p` (see
        `keras_nvae.latents.standardized_latents`). The chosen `groups` move
        from x1's u to x2's, the others keep x1's u, and each point of the
        path is decoded with z = mu_p + sigma_p * u under its own prior. With
        all groups the first and last images are the reconstructions of x1
        and x2 with the same seed.

        Args:
            x1, x2: NHWC image batches of the same shape.
            num_steps: images per path (>= 2), both ends included.
            groups: None (all groups) or a list of group indices (decoder
                order) that move.
            mode: "linear" or "spherical" (per image and group, in u).
            seed: optional int for reproducible paths.
            output: "mean" or "sample" (see `sample`).

        Returns:
            float32 images in [0, 1], `(batch * num_steps, H, W, C)`, pair
            major: path i is rows `i * num_steps` to `(i + 1) * num_steps - 1`.

        Example:
        ```python
        path = model.interpolate(images[:4], images[4:8], num_steps=8, groups=[0, 1])
        ```
        """
        groups = latents_lib.check_interpolation_arguments(
            x1, x2, num_steps, groups, mode, self.num_groups
        )
        x1, _ = self.preprocess_images(x1)
        x2, _ = self.preprocess_images(x2)
        seeds = noise_lib.CallSeeds(seed)
        eps = self._latent_noise(tf.shape(x1)[0], None, seeds)
        logits = latents_lib.interpolation_logits(self, x1, x2, int(num_steps), groups, mode, eps)
        return self._images_from_logits(logits, output, seeds)

    def _images_from_logits(self, logits, output, seeds):
        dist = self.decoder_distribution(logits)
        if output == "mean":
            return dist.mean()
        if output == "sample":
            seed = seeds.pixels()
            if seed is None:
                seed = noise_lib.generator_seed(self.seed_generator)
            return dist.sample(seed=seed)
        raise ValueError(f"`output` must be 'mean' or 'sample', got {output!r}.")

    def log_likelihood(self, images, num_samples=100, images_per_pass=None, seed=None):
        """Importance-weighted log p(x) in nats per image (BN in eval mode).

        `logsumexp_k(log p(x|z_k) + log p(z_k) - log q(z_k|x)) - log K`. The
        K samples of an image are drawn in passes over the batch repeated
        along the batch axis, at most `images_per_pass` images (but at least
        one copy of the batch) per pass.

        Args:
            images: NHWC images.
            num_samples: K, the number of importance samples.
            images_per_pass: optional int; default twice the configuration's
                training batch size.
            seed: optional int (reproducible samples) or
                `keras.random.SeedGenerator` (the samples advance it).

        Returns:
            (batch,) float32 tensor of log-likelihoods in nats.
        """
        num_samples = int(num_samples)
        if num_samples < 1:
            raise ValueError(f"`num_samples` must be >= 1, got {num_samples}.")
        if images_per_pass is None:
            images_per_pass = 2 * self.config.batch_size
        x, target = self.preprocess_images(images)
        batch_size = tf.shape(x)[0]
        copies = tf.minimum(tf.maximum(1, images_per_pass // batch_size), num_samples)
        num_passes = (num_samples + copies - 1) // copies
        x, target = tf.repeat(x, copies, axis=0), tf.repeat(target, copies, axis=0)
        seeds = noise_lib.CallSeeds(seed)

        def one_pass(index, total):
            out = self._forward(x, training=False, seeds=seeds.folded(index))
            log_p_x = self.decoder_distribution(out["logits"]).log_prob(target)
            log_w = tf.reshape(log_p_x + out["log_p"] - out["log_q"], (-1, copies))
            drawn = index * copies + tf.range(copies)
            log_w = tf.where(drawn[None] < num_samples, log_w, -math.inf)
            total = tf.reduce_logsumexp(tf.concat([total[:, None], log_w], 1), axis=1)
            return index + 1, total

        initial = tf.fill([batch_size], -math.inf)
        _, total = tf.while_loop(
            lambda index, _: index < num_passes, one_pass, (tf.constant(0), initial)
        )
        return total - math.log(num_samples)


def _call_seeds(seed):
    if isinstance(seed, noise_lib.CallSeeds):
        return seed
    return noise_lib.CallSeeds(seed)


def _as_config(config):
    if config is None:
        return NVAEConfig()
    if isinstance(config, dict):
        return NVAEConfig.from_dict(config)
    if isinstance(config, NVAEConfig):
        return config
    raise ValueError(
        f"`config` must be an NVAEConfig or a dict, got {type(config).__name__}."
    )
