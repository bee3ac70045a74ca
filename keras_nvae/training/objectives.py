"""Pieces of the NVAE training objective.

These follow the official NVAE implementation (Vahdat & Kautz, 2020):
KL warm-up, KL balancing across latent groups, the spectral and batch-norm
regularizers, and the annealed regularization coefficient. Every function
that depends on the training step takes tensors, so the objective can be
evaluated inside a compiled (and XLA-compiled) `train_step` and under
`tf.distribute` strategies.
"""

import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_nvae import distributions


def kl_warmup_coefficient(
    step,
    total_steps,
    anneal_portion=0.3,
    const_portion=1e-4,
    min_coeff=1e-4,
):
    """KL warm-up coefficient `beta` at a given training step.

    `beta` stays at `min_coeff` for the first `const_portion * total_steps`
    steps, then grows linearly to 1 over `anneal_portion * total_steps`
    steps:

    ```python
    beta = max(min((step - const_portion * total_steps)
                   / (anneal_portion * total_steps), 1), min_coeff)
    ```

    Args:
        step: Integer or float scalar (tensor or variable), the current
            training step.
        total_steps: Total number of training steps (must be positive).
        anneal_portion: Fraction of training over which `beta` is annealed
            to 1 (must be positive).
        const_portion: Fraction of training during which `beta` is held at
            `min_coeff`.
        min_coeff: Lower bound of `beta`.

    Returns:
        A float32 scalar tensor.
    """
    step = ops.cast(step, "float32")
    total_steps = ops.cast(total_steps, "float32")
    beta = (step - const_portion * total_steps) / (anneal_portion * total_steps)
    return ops.maximum(ops.minimum(beta, 1.0), min_coeff)


def kl_balancing_alphas(groups_per_scale):
    """Per-group KL balancing weights `alpha`, in decoder order.

    Scale `i` of the decoder (`i = 0` is the top, lowest-resolution scale)
    has spatial side `2**i` relative to the top and holds
    `n_i = groups_per_scale[-1 - i]` groups; each of them gets
    `alpha = (2**i)**2 / n_i`. The weights are divided by their minimum.

    Args:
        groups_per_scale: Number of latent groups per scale in encoder
            order (highest resolution first), e.g. `[10, 5]`.

    Returns:
        A float32 numpy array with one weight per latent group, top group
        first.

    Example:

    >>> kl_balancing_alphas([10, 5]).tolist()
    [1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    """
    decoder_order = list(groups_per_scale)[::-1]
    alphas = np.concatenate(
        [
            np.full((groups,), 4.0**scale / groups, dtype=np.float64)
            for scale, groups in enumerate(decoder_order)
        ]
    )
    return (alphas / alphas.min()).astype(np.float32)


def balance_kl(kl_per_group, beta, alphas, balance=True):
    """Weight the KL of each latent group and apply the warm-up coefficient.

    While `beta < 1` and `balance` is True, the groups are re-weighted so
    that groups with little KL are encouraged to be used (this prevents
    posterior collapse of latent groups):

    ```python
    c = mean_over_batch(abs(kl)) + 0.01
    c = c / alphas * sum(c)
    c = c / mean(c)
    kl = sum_over_groups(kl * stop_gradient(c))
    ```

    Otherwise the per-group KLs are simply summed. The choice is made with a
    tensor condition, so `beta` may be a tensor in a compiled function.

    Args:
        kl_per_group: Tensor of shape `(batch, num_groups)`.
        beta: Scalar KL warm-up coefficient (tensor or float).
        alphas: Balancing weights of shape `(num_groups,)`, see
            `kl_balancing_alphas`.
        balance: Python bool; if False the groups are never re-weighted.

    Returns:
        A tuple `(kl, coeffs)`: the weighted KL `beta * kl` of shape
        `(batch,)` and the group coefficients of shape `(num_groups,)`.
    """
    kl_per_group = ops.convert_to_tensor(kl_per_group)
    dtype = kl_per_group.dtype
    beta = ops.cast(beta, dtype)
    coeffs = ops.ones(ops.shape(kl_per_group)[1:], dtype=dtype)
    if balance:
        balanced = ops.mean(ops.abs(kl_per_group), axis=0) + 0.01
        balanced = balanced / ops.cast(alphas, dtype) * ops.sum(balanced)
        balanced = balanced / ops.mean(balanced)
        coeffs = ops.stop_gradient(ops.where(beta < 1.0, balanced, coeffs))
    kl = ops.sum(kl_per_group * coeffs, axis=1)
    return beta * kl, coeffs


def _l2_normalize(x, epsilon):
    """Normalize the rows of `x` as `x / max(||x||, epsilon)`."""
    norm = ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True))
    return x / ops.maximum(norm, epsilon)


@keras.saving.register_keras_serializable(package="keras_nvae")
class SpectralRegularizer(keras.layers.Layer):
    """Sum of the spectral norms of a list of matrices, by power iteration.

    This is the spectral regularization of NVAE. The layer keeps a left and
    right singular-vector estimate `u`, `v` for every matrix; matrices of
    identical shape are stacked and iterated together. Each training call
    runs `num_power_iterations` power iterations (`first_call_multiplier`
    times as many on the first call), stores the new estimates, and returns
    `sum(u^T W v)`. The iteration is not differentiated, so the gradient
    with respect to `W` is `u v^T`.

    The layer is built from the list of matrix shapes `[(rows, cols), ...]`
    and must always be called with matrices of those shapes, in the same
    order. Convolution kernels are typically reshaped to
    `(out_channels, -1)` first. The state variables use
    `aggregation="only_first_replica"`, which suits `MirroredStrategy`
    where all replicas compute identical updates.

    Args:
        num_power_iterations: Power iterations per training call.
        first_call_multiplier: Factor applied to `num_power_iterations` on
            the first training call.
        epsilon: Norm floor used when normalizing `u` and `v`.
        seed: Optional integer seed for the random initial `u` and `v`.
        **kwargs: Standard `keras.layers.Layer` keyword arguments. The
            dtype defaults to `"float32"`, since the estimate needs full
            precision.

    Example:

    >>> regularizer = SpectralRegularizer()
    >>> kernels = [keras.random.normal((8, 27)), keras.random.normal((8, 27))]
    >>> loss = regularizer(kernels, training=True)
    """

    def __init__(
        self,
        num_power_iterations=4,
        first_call_multiplier=10,
        epsilon=1e-3,
        seed=None,
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_power_iterations = num_power_iterations
        self.first_call_multiplier = first_call_multiplier
        self.epsilon = epsilon
        self.seed = seed

    def build(self, input_shape):
        """Create the power-iteration state.

        Args:
            input_shape: List of 2-D matrix shapes `(rows, cols)`.
        """
        groups = {}
        for index, shape in enumerate(input_shape):
            shape = tuple(int(dim) for dim in shape)
            if len(shape) != 2:
                raise ValueError(
                    "`SpectralRegularizer` expects 2-D matrices. "
                    f"Received shape {shape} at position {index}."
                )
            groups.setdefault(shape, []).append(index)
        self._group_indices = list(groups.values())
        self._u = []
        self._v = []
        for position, ((rows, cols), indices) in enumerate(groups.items()):
            self._u.append(
                self._add_unit_vectors(
                    (len(indices), rows), 2 * position, f"u_{rows}x{cols}"
                )
            )
            self._v.append(
                self._add_unit_vectors(
                    (len(indices), cols), 2 * position + 1, f"v_{rows}x{cols}"
                )
            )
        self.initialized = self.add_weight(
            shape=(),
            initializer="zeros",
            dtype="int64",
            trainable=False,
            aggregation="only_first_replica",
            name="initialized",
        )

    def _add_unit_vectors(self, shape, seed_offset, name):
        """Add a state variable of random unit-norm rows."""
        seed = None if self.seed is None else self.seed + seed_offset
        normal = keras.initializers.RandomNormal(seed=seed)

        def initializer(shape, dtype=None):
            return _l2_normalize(normal(shape, dtype=dtype), self.epsilon)

        return self.add_weight(
            shape=shape,
            initializer=initializer,
            trainable=False,
            aggregation="only_first_replica",
            name=name,
        )

    def call(self, matrices, training=False):
        """Return the summed spectral norm estimates.

        Args:
            matrices: List of 2-D tensors with the shapes the layer was built
                with, in the same order.
            training: If True, run the power iterations and store the
                updated `u`, `v`; otherwise use the stored estimates as is.

        Returns:
            A scalar tensor, `sum_i u_i^T W_i v_i`, differentiable with
            respect to the matrices only.
        """
        iterations = None
        if training:
            iterations = ops.cast(
                ops.where(
                    ops.equal(self.initialized, 0),
                    self.num_power_iterations * self.first_call_multiplier,
                    self.num_power_iterations,
                ),
                "int32",
            )
        return self._estimate(matrices, iterations)

    def converge(self, matrices, iterations):
        """Run `iterations` power iterations now and store `u`, `v`.

        Marks the state as initialised, so the next training call runs
        `num_power_iterations` iterations, not the first call's multiple.

        Args:
            matrices: List of 2-D tensors, as for `call`.
            iterations: Number of power iterations (positive int).

        Returns:
            The summed estimate `sum_i u_i^T W_i v_i` after the iterations.

        Raises:
            ValueError: If `iterations` is not a positive integer.
        """
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(
                f"`iterations` must be a positive integer, got {iterations!r}."
            )
        return self._estimate(matrices, ops.convert_to_tensor(iterations, "int32"))

    def _estimate(self, matrices, iterations):
        """`sum_i u_i^T W_i v_i`, after `iterations` stored power iterations
        (None: none, and the state is left as is)."""
        total = ops.zeros((), dtype=self.compute_dtype)
        for indices, u_var, v_var in zip(self._group_indices, self._u, self._v):
            weights = ops.cast(
                ops.stack([matrices[i] for i in indices]), self.compute_dtype
            )
            u = ops.cast(u_var, self.compute_dtype)
            v = ops.cast(v_var, self.compute_dtype)
            if iterations is not None:
                u, v = self._power_iteration(ops.stop_gradient(weights), u, v, iterations)
                u_var.assign(ops.cast(u, u_var.dtype))
                v_var.assign(ops.cast(v, v_var.dtype))
            u = ops.stop_gradient(u)
            v = ops.stop_gradient(v)
            total = total + ops.sum(ops.einsum("nr,nrc,nc->n", u, weights, v))
        if iterations is not None:
            self.initialized.assign(1)
        return total

    def _power_iteration(self, weights, u, v, iterations):
        def step(_, state):
            u, _ = state
            v = _l2_normalize(ops.einsum("nr,nrc->nc", u, weights), self.epsilon)
            u = _l2_normalize(ops.einsum("nrc,nc->nr", weights, v), self.epsilon)
            return u, v

        return ops.fori_loop(0, iterations, step, (u, v))

    def compute_output_shape(self, input_shape):
        return ()

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_power_iterations": self.num_power_iterations,
                "first_call_multiplier": self.first_call_multiplier,
                "epsilon": self.epsilon,
                "seed": self.seed,
            }
        )
        return config


def batchnorm_regularizer(gammas):
    """Batch-norm scale regularizer of NVAE: `sum_i max(abs(gamma_i))`.

    Args:
        gammas: List of batch-normalization scale vectors.

    Returns:
        A float32 scalar tensor.
    """
    # Vectors of equal length are stacked so a deep model adds a few ops per
    # length, not per layer, to the training graph.
    by_length = {}
    for gamma in gammas:
        by_length.setdefault(tuple(gamma.shape), []).append(ops.cast(gamma, "float32"))
    total = ops.zeros((), dtype="float32")
    for group in by_length.values():
        total = total + ops.sum(ops.max(ops.abs(ops.stack(group)), axis=-1))
    return total


def regularization_coefficient(
    beta,
    weight_decay_norm,
    weight_decay_norm_init=10.0,
    anneal=False,
):
    """Coefficient of the spectral and batch-norm regularizers.

    With `anneal=True` the coefficient is interpolated geometrically from
    `weight_decay_norm_init` (at `beta = 0`) to `weight_decay_norm` (at
    `beta = 1`:

    ```python
    exp((1 - beta) * log(weight_decay_norm_init)
        + beta * log(weight_decay_norm))
    ```

    Otherwise it is the constant `weight_decay_norm`.

    Args:
        beta: KL warm-up coefficient (scalar tensor or float).
        weight_decay_norm: Final (or constant) coefficient, a Python float.
        weight_decay_norm_init: Initial coefficient when annealing, a
            Python float.
        anneal: Python bool, whether to anneal the coefficient.

    Returns:
        A float32 scalar tensor.

    Raises:
        ValueError: If `anneal` is True and a coefficient is not positive.
    """
    if not anneal:
        return ops.convert_to_tensor(weight_decay_norm, dtype="float32")
    if weight_decay_norm <= 0 or weight_decay_norm_init <= 0:
        raise ValueError(
            "Annealing the regularization coefficient requires positive "
            f"`weight_decay_norm` and `weight_decay_norm_init`. Received: "
            f"weight_decay_norm={weight_decay_norm}, "
            f"weight_decay_norm_init={weight_decay_norm_init}"
        )
    beta = ops.cast(beta, "float32")
    log_init = math.log(weight_decay_norm_init)
    log_final = math.log(weight_decay_norm)
    return ops.exp((1.0 - beta) * log_init + beta * log_final)


def elbo_terms(config, out):
    """Batch means of the NELBO, its two parts, its bits/dim and the active groups.

    Args:
        config: the model's `NVAEConfig`.
        out: the model's outputs (`NVAE.call`), with "recon_nll" and "kl".

    Returns:
        dict with "nelbo", "recon", "kl", "bpd" and "active_groups".
    """
    kl = tf.reduce_sum(out["kl"], axis=1)
    nelbo = tf.reduce_mean(out["recon_nll"] + kl)
    return {
        "nelbo": nelbo,
        "recon": tf.reduce_mean(out["recon_nll"]),
        "kl": tf.reduce_mean(kl),
        "bpd": distributions.nats_to_bits_per_dim(nelbo, config.num_dims),
        "active_groups": active_groups(out["kl"], config.num_latent_per_group),
    }


def active_groups(kl_per_group, num_latent_per_group):
    """Number of groups whose batch-mean KL per latent channel exceeds 0.1 nats."""
    per_channel = tf.reduce_mean(kl_per_group, axis=0) / num_latent_per_group
    return tf.reduce_sum(tf.cast(per_channel > 0.1, tf.float32))


def configured_regularization(config, beta, reg_coeff=None):
    """The weight lambda of the spectral and BN regularisers, and whether they are added.

    Args:
        config: an `NVAEConfig` (`weight_decay_norm`, `weight_decay_norm_init`,
            `weight_decay_norm_anneal`).
        beta: the step's KL warm-up coefficient.
        reg_coeff: a weight fixed by the caller, or None for the configured
            one (annealed with `beta` when `weight_decay_norm_anneal`).

    Returns:
        `(reg_coeff, regularised)`: a float32 scalar tensor, and a Python bool
        that is false when the configured `weight_decay_norm` is 0 (a fixed
        `reg_coeff` is always added).
    """
    if reg_coeff is not None:
        return tf.cast(reg_coeff, tf.float32), True
    coeff = regularization_coefficient(
        beta,
        config.weight_decay_norm,
        config.weight_decay_norm_init,
        anneal=config.weight_decay_norm_anneal,
    )
    return coeff, config.weight_decay_norm > 0
