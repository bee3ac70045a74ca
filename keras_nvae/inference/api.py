"""NVAE's inference API: sampling, encoding, decoding, reconstruction, likelihood."""

import math

import tensorflow as tf

from keras_nvae.inference import latents as latents_lib
from keras_nvae import inputs as inputs_lib
from keras_nvae import noise as noise_lib

# The activation memory of one importance-sampling pass when its size is not given.
EVAL_MEMORY_BUDGET_BYTES = 2**30


class NVAEInference:
    """What a trained NVAE network does: a mixin for `keras_nvae.network.NVAENetwork`.

    It draws prior samples (`sample`, `prior_logits`), encodes and decodes
    (`encode`, `decode`), reconstructs with all or only the top latent groups
    from the posterior (`reconstruct`), interpolates between images in latent
    space (`interpolate`) and estimates log-likelihoods (`log_likelihood`),
    with the randomness of `keras_nvae.noise`. It uses the network's towers
    (`bottom_up`, `top_down`, `forward_terms`), `preprocess_images`,
    `decoder_distribution` and `seed_generator`.
    """

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
        inputs_lib.check_output(output)
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
        return self.top_down(
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
        return self.forward_terms(x, False, noise, noise_lib.CallSeeds(seed))["latents"]

    def decode(self, latents, output="mean", seed=None):
        """Decode given latents (one tensor per group, decoder order) to images;
        `seed` (an int) fixes the pixel samples of `output="sample"`."""
        inputs_lib.check_output(output)
        latents = inputs_lib.check_noise(latents, self.latent_shapes)
        logits = self.top_down(tf.shape(latents[0])[0], lambda index, _, s: latents[index])
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
        inputs_lib.check_output(output)
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
        inputs_lib.check_output(output)
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
        seed = seeds.pixels()
        if seed is None:
            seed = noise_lib.generator_seed(self.seed_generator)
        return dist.sample(seed=seed)

    def log_likelihood(
        self,
        images,
        num_samples=100,
        images_per_pass=None,
        seed=None,
        memory_budget_bytes=EVAL_MEMORY_BUDGET_BYTES,
    ):
        """Importance-weighted log p(x) in nats per image (BN in eval mode).

        `logsumexp_k(log p(x|z_k) + log p(z_k) - log q(z_k|x)) - log K`. The
        K samples of an image are drawn in passes over the batch repeated
        along the batch axis, at most `images_per_pass` images (but at least
        one copy of the batch) per pass; the encoder's bottom-up pass, which
        does not depend on the samples, runs once. Called eagerly, the
        estimator runs as a `tf.function`, traced once per image shape and
        arguments.

        Args:
            images: NHWC images.
            num_samples: K, the number of importance samples: an int, or a
                scalar int32 tensor in a traced function (the SavedModel).
            images_per_pass: optional int. Default: as many images as fit in
                `memory_budget_bytes` (see `eval_images_per_pass`).
            seed: optional int (reproducible samples) or
                `keras.random.SeedGenerator` (the samples advance it).
            memory_budget_bytes: the activation memory one pass may use when
                `images_per_pass` is None.

        Returns:
            (batch,) float32 tensor of log-likelihoods in nats.

        Example:
        ```python
        log_px = model.log_likelihood(images, num_samples=1000, seed=0)
        ```
        """
        if tf.is_tensor(num_samples):
            num_samples = _checked_tensor_count(num_samples)
        for name, value in (
            ("num_samples", None if tf.is_tensor(num_samples) else num_samples),
            ("images_per_pass", images_per_pass),
            ("memory_budget_bytes", memory_budget_bytes),
        ):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
        noise_lib.CallSeeds(seed)  # Validates `seed` before tracing.
        if isinstance(seed, int):
            seed = noise_lib.base_seed(seed)  # One trace for every int seed.
        if images_per_pass is None:
            images_per_pass = self.eval_images_per_pass(memory_budget_bytes)
        x, target = self.preprocess_images(images)
        estimate = self._importance_weighted_bound
        if tf.executing_eagerly():
            if getattr(self, "_compiled_bound", None) is None:
                self._compiled_bound = tf.function(estimate, reduce_retracing=True)
            estimate = self._compiled_bound
        return estimate(x, target, num_samples, images_per_pass, seed)

    def score(self, images, num_samples=100, images_per_pass=None, seed=None):
        """Anomaly scores: the importance-weighted negative log-likelihood of
        every image in bits per dimension (higher = less likely under the model).

        Args:
            images: NHWC images.
            num_samples: K, the number of importance samples.
            images_per_pass: optional int (see `log_likelihood`).
            seed: optional int or `keras.random.SeedGenerator`.

        Returns:
            (batch,) float32 tensor: `-log p(x) / (ln 2 * H * W * C)`.

        Example:
        ```python
        scores = model.score(images, num_samples=10, seed=0)
        ```
        """
        log_px = self.log_likelihood(images, num_samples, images_per_pass, seed=seed)
        return -log_px / (math.log(2.0) * self.config.num_dims)

    def eval_images_per_pass(self, memory_budget_bytes=EVAL_MEMORY_BUDGET_BYTES):
        """How many images one likelihood pass takes within a memory budget.

        The per-image size is `activation_bytes_per_image()`, the bytes of
        every tensor of a batch-1 inference pass as if none were freed, an
        upper bound of what the pass holds at once.

        Args:
            memory_budget_bytes: int, the activation memory of one pass.

        Returns:
            int >= 1: `memory_budget_bytes // activation_bytes_per_image()`.
        """
        return max(1, memory_budget_bytes // self.activation_bytes_per_image())

    def activation_bytes_per_image(self):
        """Bytes of all tensors one image's inference forward pass creates.

        Measured once per model on a traced batch-1 pass (posterior samples,
        BN in inference mode, the decoder likelihood): the sum of the sizes of
        every floating-point op output of the graph.

        Returns:
            int, bytes per image.
        """
        if getattr(self, "_activation_bytes", None) is None:
            with tf.init_scope():
                self._activation_bytes = _graph_activation_bytes(self)
        return self._activation_bytes

    def _importance_weighted_bound(self, x, target, num_samples, images_per_pass, seed):
        batch_size = tf.shape(x)[0]
        copies = tf.minimum(tf.maximum(1, images_per_pass // batch_size), num_samples)
        num_passes = (num_samples + copies - 1) // copies
        # With BN in inference mode the bottom-up pass does not depend on the noise.
        features = [tf.repeat(f, copies, axis=0) for f in self.bottom_up(x, training=False)]
        x, target = tf.repeat(x, copies, axis=0), tf.repeat(target, copies, axis=0)
        seeds = noise_lib.CallSeeds(seed)

        def one_pass(index, total):
            out = self.forward_terms(x, False, seeds=seeds.folded(index), features=features)
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
        log_num_samples = tf.math.log(tf.cast(num_samples, tf.float64))
        return total - tf.cast(log_num_samples, total.dtype)


def _graph_activation_bytes(model):
    """The floating-point op outputs of a traced batch-1 likelihood pass, in bytes."""

    def one_pass(x):
        out = model.forward_terms(x, training=False)
        return model.decoder_distribution(out["logits"]).log_prob(
            inputs_lib.crop_padding(x, model.config)
        )

    size = model.config.model_image_size
    spec = tf.TensorSpec((1, size, size, model.config.num_channels), tf.float32)
    graph = tf.function(one_pass).get_concrete_function(spec).graph
    total = 0
    for op in graph.get_operations():
        if op.type in ("ReadVariableOp", "Const", "VarHandleOp"):
            continue
        for output in op.outputs:
            if output.dtype.is_floating and output.shape.is_fully_defined():
                total += output.shape.num_elements() * output.dtype.size
    return max(total, 1)


def _checked_tensor_count(num_samples):
    """`num_samples` (a scalar int tensor), failing at run time unless it is >= 1."""
    check = tf.debugging.assert_positive(
        num_samples, message="log_likelihood: num_samples must be >= 1"
    )
    with tf.control_dependencies([check]):
        return tf.identity(num_samples)


def _call_seeds(seed):
    if isinstance(seed, noise_lib.CallSeeds):
        return seed
    return noise_lib.CallSeeds(seed)
