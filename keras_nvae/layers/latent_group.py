"""One latent group of NVAE: everything the hierarchy repeats per group."""

import keras
import tensorflow as tf

from keras_nvae import distributions
from keras_nvae.layers.combiners import DecoderCombiner, EncoderCombiner
from keras_nvae.layers.conv import Conv2D
from keras_nvae.layers.flows import PairedIAFCell
from keras_nvae.layers.remat import rematerialize
from keras_nvae.layers.residual_cell import ResidualCell


@keras.saving.register_keras_serializable(package="keras_nvae")
class LatentGroup(keras.layers.Layer):
    """A latent group: its encoder cells, posterior, prior, flows and decoder cells.

    NVAE's hierarchy is a stack of these groups, in decoder order (the top
    group first). Bottom-up, `encode` runs the group's encoder cells; their
    output is the group's bottom-up feature. Top-down, `decode` runs the
    decoder cells in front of the group, `posterior` and `prior` give
    q(z | x, z_<g) and p(z | z_<g) from the bottom-up feature and the decoder
    state, `flow` applies the group's IAF flows to a posterior sample and
    `combine` feeds z into the decoder state.

    The top group has no decoder cells and a fixed prior N(0, 1.01^2); its
    posterior reads the bottom-up feature alone through ELU-Conv1x1-ELU.
    Every other group's prior is a Conv1x1 of the decoder state, and its
    posterior reads the bottom-up feature plus a Conv1x1 of the decoder state
    (bidirectional inference), residual to the prior when
    `residual_posterior` is True.

    Args:
        encoder_filters: channels of the bottom-up features at this scale.
        decoder_filters: channels of the decoder state at this scale.
        num_latents: latent channels of the group.
        is_top: whether this is the top (first) group.
        num_encoder_cells: encoder residual cells of the group.
        num_decoder_cells: decoder residual cells in front of the group
            (ignored for the top group).
        encoder_cell_ops: op recipe of the encoder cells (see
            `keras_nvae.config.ARCHITECTURES`).
        decoder_cell_ops: op recipe of the decoder cells.
        num_flows: paired IAF cells applied to posterior samples.
        use_se: squeeze-and-excitation in the residual cells.
        residual_posterior: q is parameterised relative to p.
        remat: gradient checkpointing in training: "cell" (or True)
            recomputes each cell in the backward pass, "group" recomputes the
            encoder cells as one block and `posterior_step` as one block,
            "none" (or False) keeps every activation.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    ```python
    group = keras_nvae.layers.LatentGroup(16, 16, num_latents=4)
    group.build((None, 8, 8, 16))
    h = group.encode(tf.zeros((2, 8, 8, 16)))
    s = group.decode(tf.zeros((2, 8, 8, 16)))
    q, p = group.posterior_and_prior(h, s)
    z, log_det = group.flow(q.sample())
    s = group.combine(s, z)
    ```
    """

    def __init__(
        self,
        encoder_filters,
        decoder_filters,
        num_latents,
        is_top=False,
        num_encoder_cells=1,
        num_decoder_cells=1,
        encoder_cell_ops=("bnswish", "bnswish"),
        decoder_cell_ops=("mbconv_e6",),
        num_flows=0,
        use_se=True,
        residual_posterior=True,
        remat=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.encoder_filters = int(encoder_filters)
        self.decoder_filters = int(decoder_filters)
        self.num_latents = int(num_latents)
        self.is_top = bool(is_top)
        self.num_encoder_cells = int(num_encoder_cells)
        self.num_decoder_cells = 0 if self.is_top else int(num_decoder_cells)
        self.encoder_cell_ops = tuple(encoder_cell_ops)
        self.decoder_cell_ops = tuple(decoder_cell_ops)
        self.num_flows = int(num_flows)
        self.use_se = bool(use_se)
        self.residual_posterior = bool(residual_posterior)
        self.remat = {True: "cell", False: "none"}.get(remat, remat)
        if self.remat not in ("none", "cell", "group"):
            raise ValueError(
                f"LatentGroup: remat must be True, False, 'none', 'cell' or 'group', got {remat!r}."
            )

        self.encoder_cells = [
            self._cell(self.encoder_filters, "normal_enc", self.encoder_cell_ops, f"encoder_cell_{i}")
            for i in range(self.num_encoder_cells)
        ]
        if self.is_top:
            self.posterior_input = Conv2D(
                self.encoder_filters, 1, use_bias=True, name="posterior_input"
            )
            self.prior_head = None
        else:
            self.posterior_input = EncoderCombiner(
                self.encoder_filters, name="posterior_input"
            )
            self.prior_head = Conv2D(
                2 * self.num_latents, 1, use_bias=True, name="prior_head"
            )
        self.posterior_head = Conv2D(
            2 * self.num_latents, 3, use_bias=True, name="posterior_head"
        )
        self.flows = [PairedIAFCell(name=f"flow_{i}") for i in range(self.num_flows)]
        self.decoder_cells = [
            self._cell(self.decoder_filters, "normal_dec", self.decoder_cell_ops, f"decoder_cell_{i}")
            for i in range(self.num_decoder_cells)
        ]
        self.combiner = DecoderCombiner(self.decoder_filters, name="combiner")

    def _cell(self, filters, cell_type, ops, name):
        remat = self.remat == "cell"
        return ResidualCell(filters, cell_type, ops, self.use_se, remat, name=name)

    def build(self, input_shape):
        """Builds the sublayers for a decoder state of shape `input_shape`."""
        state = tuple(input_shape)
        feature = state[:-1] + (self.encoder_filters,)
        latent = state[:-1] + (self.num_latents,)
        for cell in self.encoder_cells:
            cell.build(feature)
        if self.is_top:
            self.posterior_input.build(feature)
        else:
            self.posterior_input.build(feature, state)
            self.prior_head.build(state)
        self.posterior_head.build(feature)
        for flow in self.flows:
            flow.build(latent)
        for cell in self.decoder_cells:
            cell.build(state)
        self.combiner.build(state, latent)
        self.built = True

    # ------------------------------------------------------------- bottom-up
    def encode(self, h, training=None):
        """Runs the encoder cells; returns the group's bottom-up feature."""

        def cells(h):
            for cell in self.encoder_cells:
                h = cell(h, training=training)
            return h

        if self.remat == "group" and training:
            return rematerialize(cells, h)
        return cells(h)

    # -------------------------------------------------------------- top-down
    def decode(self, s, training=None):
        """Runs the decoder cells in front of the group on the state `s`."""
        for cell in self.decoder_cells:
            s = cell(s, training=training)
        return s

    def _prior_params(self, s):
        params = self.prior_head(tf.nn.elu(s))
        return distributions.split_normal_params(tf.cast(params, tf.float32))

    def _top_prior(self, s, temperature):
        shape = tf.concat([tf.shape(s)[:-1], [self.num_latents]], axis=0)
        return distributions.standard_normal_prior(tf.zeros(shape), temperature)

    def prior(self, s, temperature=1.0):
        """p(z | z_<g) at `temperature`, a `tfd.Normal` over (batch, h, w, c)."""
        if self.is_top:
            return self._top_prior(s, temperature)
        return distributions.normal_from_params(*self._prior_params(s), temperature)

    def posterior_and_prior(self, feature, s):
        """(q(z | x, z_<g), p(z | z_<g)) from the bottom-up feature and state."""
        if self.is_top:
            ftr = tf.nn.elu(self.posterior_input(tf.nn.elu(feature)))
            params = distributions.split_normal_params(
                tf.cast(self.posterior_head(ftr), tf.float32)
            )
            return distributions.normal_from_params(*params), self._top_prior(s, 1.0)
        mu_p, log_sigma_p = self._prior_params(s)
        ftr = self.posterior_input(feature, s)
        mu_q, log_sigma_q = distributions.split_normal_params(
            tf.cast(self.posterior_head(ftr), tf.float32)
        )
        if self.residual_posterior:
            q = distributions.residual_normal(mu_p, log_sigma_p, mu_q, log_sigma_q)
        else:
            q = distributions.normal_from_params(mu_q, log_sigma_q)
        return q, distributions.normal_from_params(mu_p, log_sigma_p)

    def flow(self, z):
        """Applies the IAF flows; returns (z, per-image log-determinant).

        The flows are volume preserving, so the log-determinant is zero.
        """
        for cell in self.flows:
            z = cell.transform(z)
        return z, tf.zeros(tf.shape(z)[:1])

    def sample_posterior(self, feature, s, eps):
        """A posterior sample `z = flows(mu_q + sigma_q * eps)` and its terms.

        Args:
            feature: the group's bottom-up feature.
            s: the decoder state after `decode`.
            eps: standard-normal noise shaped like z.

        Returns:
            (z, log_q, log_p, kl), the last three per image. The KL is
            analytic without flows and the one-sample estimate log q - log p
            with flows.
        """
        q, p = self.posterior_and_prior(feature, s)
        z0 = q.loc + q.scale * eps
        log_q = tf.reduce_sum(q.log_prob(z0), axis=(1, 2, 3))
        z, log_det = self.flow(z0)
        log_q -= log_det
        log_p = tf.reduce_sum(p.log_prob(z), axis=(1, 2, 3))
        if self.num_flows:
            kl = log_q - log_p
        else:
            kl = tf.reduce_sum(q.kl_divergence(p), axis=(1, 2, 3))
        return z, log_q, log_p, kl

    def posterior_step(self, s, feature, eps, training=None):
        """The group's whole top-down step with a posterior sample.

        `decode`, then `sample_posterior`, then `combine`. With remat "group"
        in training it runs as one recomputed block: only `s`, `feature` and
        `eps` are kept for the backward pass, and the recomputation reuses
        `eps`, so it is the same forward pass.

        Args:
            s: the decoder state entering the group.
            feature: the group's bottom-up feature.
            eps: standard-normal noise shaped like z.
            training: training-mode BatchNorm.

        Returns:
            (s, z, log_q, log_p, kl): the state after `combine`, and what
            `sample_posterior` returns.
        """

        def step(s, feature, eps):
            s = self.decode(s, training=training)
            z, log_q, log_p, kl = self.sample_posterior(feature, s, eps)
            return self.combine(s, z), z, log_q, log_p, kl

        if self.remat == "group" and training:
            return rematerialize(step, s, feature, eps)
        return step(s, feature, eps)

    def sample_prior(self, s, eps, temperature=1.0):
        """A prior sample `mu_p + sigma_p * temperature * eps` (no flows)."""
        p = self.prior(s, temperature)
        return p.loc + p.scale * eps

    def combine(self, s, z):
        """Feeds the latent sample `z` into the decoder state `s`."""
        return self.combiner(s, z)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "encoder_filters": self.encoder_filters,
                "decoder_filters": self.decoder_filters,
                "num_latents": self.num_latents,
                "is_top": self.is_top,
                "num_encoder_cells": self.num_encoder_cells,
                "num_decoder_cells": self.num_decoder_cells,
                "encoder_cell_ops": list(self.encoder_cell_ops),
                "decoder_cell_ops": list(self.decoder_cell_ops),
                "num_flows": self.num_flows,
                "use_se": self.use_se,
                "residual_posterior": self.residual_posterior,
                "remat": self.remat,
            }
        )
        return config
