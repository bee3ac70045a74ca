"""The stages every NVAE image pipeline shares: batching, shuffling, augmentation.

Every pipeline of `keras_nvae.data` yields batches of NHWC images and nothing
else (no labels). Batches are either `uint8` in `[0, 255]` or, for binarised
data and floating-point inputs, `float32` in `[0, 1]`. Bit reduction and the
MNIST 28 -> 32 padding are done by the model, so the pipelines only decode,
crop/resize, augment (random horizontal flip) and binarise.

Randomness (shuffling, flips, dynamic binarisation) is deterministic for a
given `seed` and changes from one epoch (iteration over the dataset) to the
next, so Bernoulli samples and flips are redrawn every epoch.
"""

import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


def dynamic_binarize(images, seed=None):
    """Samples binary images with `P(pixel = 1)` equal to its intensity.

    This is the dynamic binarisation used for MNIST by NVAE: a fresh
    Bernoulli sample is drawn every time the function runs (every epoch when
    used inside a `tf.data` pipeline).

    Args:
        images: `uint8` tensor in `[0, 255]` or floating tensor in `[0, 1]`.
        seed: optional stateless seed, a shape `[2]` integer tensor. With a
            seed the sample is a deterministic function of `(images, seed)`;
            without one `tf.random.uniform` is used.

    Returns:
        A `float32` tensor of the same shape containing only 0 and 1.

    Example:

    >>> x = tf.constant([[0, 255]], dtype=tf.uint8)
    >>> dynamic_binarize(x, seed=[1, 2]).numpy()
    array([[0., 1.]], dtype=float32)
    """
    images = tf.convert_to_tensor(images)
    if images.dtype == tf.uint8:
        probs = tf.cast(images, tf.float32) / 255.0
    elif images.dtype.is_floating:
        probs = tf.cast(images, tf.float32)
    else:
        raise ValueError(
            "dynamic_binarize expects uint8 images in [0, 255] or floating "
            f"images in [0, 1]; got dtype {images.dtype.name}."
        )
    if seed is None:
        noise = tf.random.uniform(tf.shape(probs))
    else:
        noise = tf.random.stateless_uniform(tf.shape(probs), seed=seed)
    return tf.cast(noise < probs, tf.float32)


def _random_flip(images, seed):
    """Flips each NHWC image left-right with probability 1/2."""
    batch = tf.shape(images)[0]
    flip = tf.random.stateless_uniform([batch], seed=seed) < 0.5
    return tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)


def _finish(
    ds,
    *,
    batch_size,
    shuffle,
    shuffle_buffer,
    seed,
    repeat,
    drop_remainder,
    flip,
    binarize,
    gather=None,
):
    """Shuffles, repeats, batches, augments and prefetches a dataset.

    Args:
        ds: dataset of single elements (images, or indices with `gather`).
        gather: optional function mapping a batch of elements to a batch of
            NHWC images.

    Returns:
        A dataset of NHWC image batches.
    """
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(
        int(batch_size), drop_remainder=drop_remainder, num_parallel_calls=AUTOTUNE
    )
    if gather is not None:
        ds = ds.map(gather, num_parallel_calls=AUTOTUNE)
    if flip or binarize:
        # One int64 per batch, redrawn each epoch, seeds the stateless ops so
        # that augmentation is reproducible for a fixed `seed`.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

        def augment(batch_seed, images):
            if flip:
                images = _random_flip(images, tf.stack([batch_seed, 0]))
            if binarize:
                images = dynamic_binarize(images, tf.stack([batch_seed, 1]))
            return images

        ds = tf.data.Dataset.zip(seeds, ds).map(augment, num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def _crop_and_resize(image, image_size, crop_box=None):
    """Crops a `uint8` HWC image (box, else centred square) and resizes it.

    Resizing is bilinear with antialiasing, which matches PIL's resize used by
    the official NVAE transforms.
    """
    if crop_box is not None:
        left, top, right, bottom = crop_box
        image = image[top:bottom, left:right, :]
    else:
        shape = tf.shape(image)
        height, width = shape[0], shape[1]
        side = tf.minimum(height, width)
        image = tf.image.crop_to_bounding_box(
            image, (height - side) // 2, (width - side) // 2, side, side
        )
    image = tf.image.resize(
        image, [image_size, image_size], method="bilinear", antialias=True
    )
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
