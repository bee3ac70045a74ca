"""The NVAE network: towers, latent groups and the inference API."""

import keras
import tensorflow as tf

from keras_nvae.config import NVAEConfig
from keras_nvae import distributions
from keras_nvae.inference.api import NVAEInference
from keras_nvae import inputs as inputs_lib
from keras_nvae.layers.conv import Conv2D
from keras_nvae.layers.initializers import HostUniform
from keras_nvae import towers


class NVAENetwork(NVAEInference, keras.Model):
    """The NVAE network (no training policy); the inference API (`sample`,
    `reconstruct`, ...) comes from `keras_nvae.inference.NVAEInference`.

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
            initializer=HostUniform(0.0, 1.0),
        )
        self._build_bottom_up()
        self._build_groups()
        self._build_top_down()
        self.built = True

    def _build_bottom_up(self):
        """Builds the stem and the encoder's cells from the image shape."""
        size = self.config.model_image_size
        shape = (None, size, size, self.config.num_channels)
        self.stem.build(shape)
        shape = _build_chain(self.pre_process, self.stem.compute_output_shape(shape))
        _build_chain(self.encoder_down_cells, shape)

    def _build_groups(self):
        for (height, width, _), group in zip(self.config.latent_shapes, self.groups):
            group.build((None, height, width, group.decoder_filters))

    def _build_top_down(self):
        """Builds the decoder's cells from the shape of `prior_ftr0`."""
        shape = _build_chain(self.decoder_up_cells, (None,) + tuple(self.prior_ftr0.shape))
        self.image_conditional.build(_build_chain(self.post_process, shape))

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
    def bottom_up(self, x, training=False):
        """Run the encoder tower: the bottom-up feature of every latent group.

        Args:
            x: preprocessed images in `[0, 1]` (`preprocess_images`), NHWC.
            training: whether the BN layers run in training mode.

        Returns:
            One feature tensor per latent group, in decoder order (top group first).
        """
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

    def top_down(self, batch_size, latent_fn, training=False, group_fn=None):
        """Run the decoder tower, taking each group's latent from `latent_fn`.

        Args:
            batch_size: the number of images (int or scalar tensor).
            latent_fn: `latent_fn(index, group, s) -> z`: the latent of group
                `index` (its `LatentGroup` and the decoder state `s` before it).
            training: whether the BN layers run in training mode.
            group_fn: `group_fn(index, group, s) -> s`, when given, runs group
                `index`'s whole step instead (decoder cells, latent, combiner).

        Returns:
            The decoder's output parameters (float32 logits of the likelihood).
        """
        prior = tf.cast(self.prior_ftr0, self.compute_dtype)
        s = tf.tile(prior[None], [batch_size, 1, 1, 1])
        for scale, groups in enumerate(self._scales()):
            if scale:
                s = self.decoder_up_cells[scale - 1](s, training=training)
            for index, group in groups:
                if group_fn is None:
                    s = group.decode(s, training=training)
                    s = group.combine(s, latent_fn(index, group, s))
                else:
                    s = group_fn(index, group, s)
        for cell in self.post_process:
            s = cell(s, training=training)
        return tf.cast(self.image_conditional(tf.nn.elu(s)), tf.float32)

    def forward_terms(self, x, training=False, noise=None, seeds=None, features=None):
        """The full forward pass: both towers, with latents drawn from the posteriors.

        Args:
            x: preprocessed images in `[0, 1]` (`preprocess_images`), NHWC.
            training: whether the BN layers run in training mode.
            noise: optional standard-normal noise, one tensor per group.
            seeds: optional `keras_nvae.noise.CallSeeds` for the latent noise.
            features: the `bottom_up` features of `x` when already computed.

        Returns:
            A dict: `logits` (decoder parameters), `log_q` and `log_p` (summed
            over groups), `kl` (per group, shape `(batch, num_groups)`) and
            `latents` (one tensor per group).
        """
        batch_size = tf.shape(x)[0]
        if features is None:
            features = self.bottom_up(x, training)
        terms = {"latents": [], "log_q": [], "log_p": [], "kl": []}
        eps = self._latent_noise(batch_size, noise, seeds)

        def posterior_step(index, group, s):
            s, *sample = group.posterior_step(s, features[index], eps(index), training)
            for key, value in zip(terms, sample):
                terms[key].append(value)
            return s

        logits = self.top_down(batch_size, None, training=training, group_fn=posterior_step)
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
        out = self.forward_terms(x, training=training, noise=noise)
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


def _build_chain(cells, shape):
    """Builds `cells`, each on the output shape of the one before; returns
    the last output shape."""
    for cell in cells:
        cell.build(shape)
        shape = tuple(cell.compute_output_shape(shape))
    return shape


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
