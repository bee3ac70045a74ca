"""Latent tools of a trained NVAE: partial posteriors and interpolation.

The functions here run an `NVAENetwork`'s towers with latents chosen group
by group. `NVAENetwork.reconstruct(..., num_posterior_groups=k)` and
`NVAENetwork.interpolate` call them; they take preprocessed images (see
`NVAENetwork.preprocess_images`) and return decoder parameters.
"""

import numpy as np
import tensorflow as tf

INTERPOLATION_MODES = ("linear", "spherical")


def partial_posterior_logits(network, x, num_posterior_groups, temperatures, eps):
    """Decoder parameters with the top groups from q(z|x), the rest from the prior.

    Args:
        network: an `NVAENetwork`.
        x: preprocessed images (the network input).
        num_posterior_groups: k; groups 0..k-1 (decoder order) are posterior
            samples, groups k.. prior samples given them.
        temperatures: one prior temperature per group (those of the first k
            groups are not used).
        eps: function `index -> standard-normal noise of group index`.

    Returns:
        The decoder parameters, NHWC.
    """
    batch_size = tf.shape(x)[0]
    features = network.bottom_up(x, training=False) if num_posterior_groups else None

    def latent(index, group, s):
        if index < num_posterior_groups:
            return group.sample_posterior(features[index], s, eps(index))[0]
        return group.sample_prior(s, eps(index), temperatures[index])

    return network.top_down(batch_size, latent)


def standardized_latents(network, x, eps):
    """A posterior sample of every group, standardised by the group's prior.

    Group g's sample z_g becomes `u_g = (z_g - mu_p) / sigma_p`, with the
    prior p(z_g | z_<g) given the sample's own z_<g (the top group: N(0,
    1.01^2)). Decoding `z_g = mu_p + sigma_p * u_g` group by group gives the
    sample back, and under the prior every u_g is standard normal, so these
    are the coordinates interpolation moves in.

    Args:
        network: an `NVAENetwork`.
        x: preprocessed images.
        eps: function `index -> standard-normal noise of group index`; the
            same noise as a reconstruction's gives that reconstruction's
            latents.

    Returns:
        A list of (batch, h, w, c) tensors, decoder order.
    """
    batch_size = tf.shape(x)[0]
    features = network.bottom_up(x, training=False)
    standardized = []

    def latent(index, group, s):
        z = group.sample_posterior(features[index], s, eps(index))[0]
        prior = group.prior(s)
        standardized.append((z - prior.loc) / prior.scale)
        return z

    network.top_down(batch_size, latent)
    return standardized


def lerp(a, b, weights):
    """Linear interpolation of two batches at `weights`.

    Args:
        a, b: tensors of equal shape (batch, ...).
        weights: (steps,) floats; 0 gives `a`, 1 gives `b`.

    Returns:
        (batch, steps, ...) tensor.
    """
    w = tf.reshape(weights, [1, -1] + [1] * (len(a.shape) - 1))
    return a[:, None] * (1.0 - w) + b[:, None] * w


def slerp(a, b, weights):
    """Spherical interpolation of two batches at `weights`, per image.

    Each image's tensor is one vector: `sin((1-w) omega) / sin(omega) a +
    sin(w omega) / sin(omega) b`, omega the angle between `a` and `b`
    (linear where the vectors are parallel, sin(omega) < 1e-6).

    Args:
        a, b: tensors of equal shape (batch, ...).
        weights: (steps,) floats; 0 gives `a`, 1 gives `b`.

    Returns:
        (batch, steps, ...) tensor.
    """
    flat_a = tf.reshape(a, (tf.shape(a)[0], -1))
    flat_b = tf.reshape(b, (tf.shape(b)[0], -1))
    cosine = tf.reduce_sum(flat_a * flat_b, 1) / (
        tf.norm(flat_a, axis=1) * tf.norm(flat_b, axis=1) + 1e-12
    )
    omega = tf.acos(tf.clip_by_value(cosine, -1.0, 1.0))[:, None]
    w = tf.reshape(weights, (1, -1))
    sin_omega = tf.sin(omega)
    parallel = sin_omega < 1e-6
    safe = tf.where(parallel, tf.ones_like(sin_omega), sin_omega)
    coeff_a = tf.where(parallel, 1.0 - w, tf.sin((1.0 - w) * omega) / safe)
    coeff_b = tf.where(parallel, w, tf.sin(w * omega) / safe)
    shape = [tf.shape(a)[0], tf.shape(weights)[0]] + [1] * (len(a.shape) - 1)
    return tf.reshape(coeff_a, shape) * a[:, None] + tf.reshape(coeff_b, shape) * b[:, None]


def posterior_group_rows(num_groups):
    """The k of a partial-posterior grid's rows: 0, 1, 2, 4, ..., and all groups."""
    rows = [0] + [2**i for i in range(num_groups.bit_length()) if 2**i < num_groups]
    return rows + [num_groups]


def check_interpolation_arguments(x1, x2, num_steps, groups, mode, num_groups):
    """Validate `NVAENetwork.interpolate`'s arguments.

    Returns:
        The sorted list of moving groups (all groups for `groups=None`).

    Raises:
        ValueError: naming the bad argument and its allowed values.
    """
    if tuple(np.shape(x1)) != tuple(np.shape(x2)):
        raise ValueError(
            "`x1` and `x2` must be image batches of the same shape (pairs x1[i], x2[i]), "
            f"got {tuple(np.shape(x1))} and {tuple(np.shape(x2))}."
        )
    integer = isinstance(num_steps, (int, np.integer)) and not isinstance(num_steps, bool)
    if not integer or num_steps < 2:
        raise ValueError(
            f"`num_steps` must be an int >= 2 (the path's images, both ends included), "
            f"got {num_steps!r}."
        )
    if mode not in INTERPOLATION_MODES:
        raise ValueError(f"`mode` must be one of {INTERPOLATION_MODES}, got {mode!r}.")
    if groups is None:
        return list(range(num_groups))
    chosen = list(groups) if isinstance(groups, (list, tuple, range)) else [groups]
    valid = all(
        isinstance(g, (int, np.integer)) and not isinstance(g, bool) and 0 <= g < num_groups
        for g in chosen
    )
    if not chosen or not valid or len(set(chosen)) != len(chosen):
        raise ValueError(
            f"`groups` must be None (all) or distinct latent group indices in "
            f"[0, {num_groups}) (decoder order), got {groups!r}."
        )
    return sorted(int(g) for g in chosen)


def interpolation_logits(network, x1, x2, num_steps, groups, mode, eps):
    """Decoder parameters along paths from x1[i] to x2[i], pair-major.

    The chosen groups move from x1's to x2's standardised latents (see
    `standardized_latents`), the others keep x1's; every group is decoded
    with the prior of the path's own z_<g.

    Args:
        network: an `NVAENetwork`.
        x1, x2: preprocessed images of equal shape.
        num_steps: images per path, both ends included.
        groups: the indices of the moving groups.
        mode: "linear" or "spherical".
        eps: function `index -> standard-normal noise of group index`, used
            for both x1 and x2.

    Returns:
        Decoder parameters of `batch * num_steps` images, path i at rows
        `i * num_steps ...`.
    """
    start = standardized_latents(network, x1, eps)
    end = standardized_latents(network, x2, eps)
    weights = tf.linspace(0.0, 1.0, num_steps)
    interpolate = lerp if mode == "linear" else slerp
    path = []
    for index, (a, b) in enumerate(zip(start, end)):
        if index in groups:
            moving = interpolate(a, b, weights)
            path.append(tf.reshape(moving, tf.concat([[-1], tf.shape(a)[1:]], 0)))
        else:
            path.append(tf.repeat(a, num_steps, axis=0))
    batch_size = tf.shape(x1)[0] * num_steps
    return network.top_down(
        batch_size, lambda index, group, s: group.sample_prior(s, path[index])
    )
