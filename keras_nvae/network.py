"""The NVAE network: towers, latent groups and the inference API."""

import math

import keras
import tensorflow as tf

from keras_nvae import distributions
from keras_nvae import inputs as inputs_lib
from keras_nvae import towers
from keras_nvae.config import NVAEConfig
from keras_nvae.layers.conv import Conv2D


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
        self.seed_generator = keras.random.SeedGenerator(0, name="noise_seed")
        self.stem = Conv2D(c.num_channels_enc, 3, use_bias=True, name="stem")
        self.pre_process = towers.pre_process_cells(c)
        self.encoder_down_cells = towers.encoder_down_cells(c)
        self.groups = towers.latent_groups(c)
        self.decoder_up_cells = towers.decoder_up_cells(c)
        self.post_process = towers.post_process_cells(c)
        self.image_conditional = Conv2D(
            distributions.decoder_num_channels(c.likelihood, c.num_channels, c.num_mixtures),
            3,
            use_bias=True,
            name="image_conditional",
        )

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
            shape=(top[0], top[1], c.num_channels_dec * towers.decoder_mult(c, 0)),
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

    def _forward(self, x, training, noise=None):
        """The full forward pass; returns decoder params and per-group terms."""
        batch_size = tf.shape(x)[0]
        features = self._bottom_up(x, training)
        terms = {"latents": [], "log_q": [], "log_p": [], "kl": []}

        def posterior_latent(index, group, s):
            if noise is None:
                eps = self._standard_normal(batch_size, self.latent_shapes[index])
            else:
                eps = noise[index]
            sample = group.sample_posterior(features[index], s, eps)
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

        `seed`: None (the model's seed generator), a
        `keras.random.SeedGenerator`, or a tuple of two ints.
        """
        full_shape = tf.concat([tf.reshape(batch_size, (1,)), tuple(shape)], axis=0)
        return tf.random.stateless_normal(full_shape, seed=self._stateless_seed(seed))

    def _stateless_seed(self, seed):
        if seed is None:
            seed = self.seed_generator
        if isinstance(seed, keras.random.SeedGenerator):
            return tf.cast(seed.next(), tf.int32)
        if isinstance(seed, (tuple, list)):
            return tf.constant(seed, tf.int32)
        return tf.constant([int(seed), 0], tf.int32)

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
            temperature: scales the standard deviation of every prior group
                (the top prior included), as in the paper.
            noise: optional list of standard-normal tensors, one per group
                (decoder order); z = mu + sigma * temperature * noise.
            seed: optional int for reproducible samples.
            return_logits: also return the decoder parameters.
            output: "mean" (decoder mean, the official choice for FID) or
                "sample" (sample the pixels too, at pixel temperature 1 as
                the official evaluation does).

        Returns:
            float32 images in [0, 1], NHWC (and the logits if requested).
        """
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"`num_samples` must be a positive int, got {num_samples!r}.")
        if not float(temperature) > 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature!r}.")
        if noise is not None:
            noise = inputs_lib.check_noise(noise, self.latent_shapes, num_samples)
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

        def prior_latent(index, group, s):
            if noise is not None:
                eps = noise[index]
            else:
                group_seed = seed
                if seed is not None and not isinstance(seed, keras.random.SeedGenerator):
                    group_seed = (int(seed), index)
                eps = self._standard_normal(num_samples, self.latent_shapes[index], group_seed)
            return group.sample_prior(s, eps, temperature)

        return self._top_down(num_samples, prior_latent, training=training)

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
        latents = inputs_lib.check_noise(latents, self.latent_shapes)
        logits = self._top_down(tf.shape(latents[0])[0], lambda index, _, s: latents[index])
        return self._images_from_logits(logits, output, seed=seed)

    def reconstruct(self, images, output="mean", noise=None, seed=None):
        """Encode then decode `images`; returns float [0, 1] NHWC images."""
        logits = self(images, training=False, noise=noise)["logits"]
        return self._images_from_logits(logits, output, seed=seed)

    def _images_from_logits(self, logits, output, seed=None):
        dist = self.decoder_distribution(logits)
        if output == "mean":
            return dist.mean()
        if output == "sample":
            return dist.sample(seed=self._stateless_seed(seed))
        raise ValueError(f"`output` must be 'mean' or 'sample', got {output!r}.")

    def log_likelihood(self, images, num_samples=100, images_per_pass=None):
        """Importance-weighted log p(x) in nats per image (BN in eval mode).

        `logsumexp_k(log p(x|z_k) + log p(z_k) - log q(z_k|x)) - log K`. The
        K samples of an image are drawn in passes over the batch repeated
        along the batch axis, at most `images_per_pass` images (but at least
        one copy of the batch) per pass. Called eagerly, the estimator runs
        as a `tf.function`, traced once per image shape and arguments.

        Args:
            images: NHWC images.
            num_samples: K, the number of importance samples.
            images_per_pass: optional int; default twice the configuration's
                training batch size.

        Returns:
            (batch,) float32 tensor of log-likelihoods in nats.
        """
        for name, value in (("num_samples", num_samples), ("images_per_pass", images_per_pass)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
        if images_per_pass is None:
            images_per_pass = 2 * self.config.batch_size
        x, target = self.preprocess_images(images)
        estimate = self._importance_weighted_bound
        if tf.executing_eagerly():
            if getattr(self, "_compiled_bound", None) is None:
                self._compiled_bound = tf.function(estimate, reduce_retracing=True)
            estimate = self._compiled_bound
        return estimate(x, target, num_samples, images_per_pass)

    def _importance_weighted_bound(self, x, target, num_samples, images_per_pass):
        batch_size = tf.shape(x)[0]
        copies = tf.minimum(tf.maximum(1, images_per_pass // batch_size), num_samples)
        num_passes = (num_samples + copies - 1) // copies
        x, target = tf.repeat(x, copies, axis=0), tf.repeat(target, copies, axis=0)

        def one_pass(index, total):
            out = self._forward(x, training=False)
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
