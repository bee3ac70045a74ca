"""What an NVAE accepts as input: images, batches from `fit`, latent noise."""

import math

import numpy as np
import tensorflow as tf



def unpack_images(data):
    """Images from what `fit`/`evaluate` pass to a step (x, (x,), (x, y), dict).

    Args:
        data: a tensor, a tuple/list whose first element holds the images, or
            a dict with an "image", "images" or "x" key.

    Returns:
        The images.

    Raises:
        ValueError: a dict without one of those keys.
    """
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


def _check_dtype_and_shape(images, config):
    dtype = tf.as_dtype(images.dtype) if hasattr(images, "dtype") else None
    if dtype is None or not (dtype == tf.uint8 or dtype.is_floating):
        raise ValueError(
            "NVAE expects images as uint8 [0, 255] or float [0, 1]; got dtype "
            f"{dtype.name if dtype is not None else type(images).__name__}. "
            "Cast integer images to uint8 (or divide by 255 to get floats)."
        )
    shape = tuple(images.shape)
    if len(shape) != 4 or tuple(shape[1:]) != tuple(config.image_shape):
        raise ValueError(
            "NVAE expects NHWC images of shape "
            f"(batch, {', '.join(map(str, config.image_shape))}); got shape {shape}. "
            "Resize/convert your images, or build the model with a matching "
            "image_shape."
        )
    return dtype


def _check_values(values, dtype, config):
    if not values.size:
        return
    if dtype.is_floating and (
        not np.all(np.isfinite(values)) or values.min() < 0.0 or values.max() > 1.0
    ):
        raise ValueError(
            "NVAE expects float images in [0, 1]; got values in "
            f"[{values.min():.4g}, {values.max():.4g}]. Divide 8-bit images by "
            "255 (or pass them as uint8)."
        )
    if config.likelihood == "bernoulli":
        binary = values if dtype.is_floating else values / 255.0
        if not np.all((binary == 0) | (binary == 1)):
            raise ValueError(
                "This NVAE uses a Bernoulli likelihood and expects binary "
                "images (0/1 floats or 0/255 uint8); binarise them first, "
                "e.g. with keras_nvae.data.dynamic_binarize."
            )


def check_fit_data(x, fit_kwargs, num_replicas, config):
    """Check what `fit` is given, in Python, before Keras iterates it.

    `x` and `validation_data` are checked when they are arrays (or tensors,
    alone or in a tuple or dict) or `tf.data.Dataset`s; other inputs
    (generators, `PyDataset`s) are left to the train step. Pixel values are
    not read.

    Args:
        x: `fit`'s `x`.
        fit_kwargs: `fit`'s other keyword arguments (`batch_size`,
            `validation_data`, `validation_batch_size` are used).
        num_replicas: replicas in sync of the model's distribution strategy.
        config: the model's `NVAEConfig`.

    Raises:
        ValueError: no images (an empty array or a dataset of cardinality
            0), images of the wrong rank, shape or dtype, or a batch smaller
            than the number of replicas.
    """
    batch_size = fit_kwargs.get("batch_size")
    _check_data(x, batch_size, num_replicas, config, "x")
    validation = fit_kwargs.get("validation_data")
    if validation is not None:
        validation_batch_size = fit_kwargs.get("validation_batch_size") or batch_size
        _check_data(validation, validation_batch_size, num_replicas, config, "validation_data")


def _check_data(x, batch_size, num_replicas, config, argument):
    where = f"NVAE.fit: `{argument}`"
    if isinstance(x, tf.data.Dataset):
        _check_dataset(x, num_replicas, config, where)
        return
    images = unpack_images(x) if isinstance(x, (tuple, list, dict)) else x
    if hasattr(images, "shape") and hasattr(images, "dtype"):
        _check_array(images, batch_size, num_replicas, config, where)


def _check_dataset(dataset, num_replicas, config, where):
    if int(dataset.cardinality()) == 0:
        raise ValueError(
            f"{where} is an empty tf.data.Dataset (cardinality 0): there are no "
            "images. Check the data source, and any take/skip/filter or "
            "batch(drop_remainder=True) that removed every element."
        )
    spec = unpack_images(dataset.element_spec)
    if not isinstance(spec, tf.TensorSpec) or spec.shape.rank is None:
        return
    _check_dtype_and_shape(spec, config)
    _check_replica_batch(spec.shape[0], num_replicas, where)


def _check_array(images, batch_size, num_replicas, config, where):
    _check_dtype_and_shape(images, config)
    count = int(images.shape[0])
    if count == 0:
        raise ValueError(
            f"{where} is an empty array of shape {tuple(images.shape)}: there are "
            "no images. Pass at least one image."
        )
    batch_size = batch_size or 32
    # The smallest batch: the last one, unless the images fill whole batches.
    _check_replica_batch(count % batch_size or batch_size, num_replicas, where)


def _check_replica_batch(batch_size, num_replicas, where):
    if batch_size is not None and batch_size < num_replicas:
        raise ValueError(
            f"{where} gives a batch of {batch_size} image(s) to split over "
            f"{num_replicas} replicas, leaving a replica without images. Use a "
            f"batch size that is a multiple of {num_replicas}, and drop the last, "
            "smaller batch (trim the array to whole batches, or batch the dataset "
            "with drop_remainder=True)."
        )


def preprocess_images(images, config):
    """Validate images and map them to what the network sees.

    Values are checked only for concrete (eager) inputs; dtype and shape
    always.

    Args:
        images: NHWC, uint8 in [0, 255] or floating in [0, 1], shaped like the
            configuration's `image_shape`.
        config: the model's `NVAEConfig`.

    Returns:
        (x, target): float32 [0, 1] images bit-reduced to `num_x_bits`; `x`
        padded to `pad_to` (the network input), `target` unpadded (what the
        likelihood scores).

    Raises:
        ValueError: wrong rank, shape, dtype or value range.
    """
    dtype = _check_dtype_and_shape(images, config)
    if not tf.is_symbolic_tensor(images) and tf.executing_eagerly():
        _check_values(np.asarray(images), dtype, config)
    x = tf.cast(images, tf.float32)
    if dtype == tf.uint8:
        x = x / 255.0
    x = reduce_bits(x, config.num_x_bits)
    target = x
    padding = _padding(config)
    if padding:
        x = tf.pad(x, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
    return x, target


def _padding(config):
    if config.pad_to is None:
        return 0
    return (config.pad_to - config.image_shape[0]) // 2


def crop_padding(tensor, config):
    """Undo `preprocess_images`' padding of an NHWC tensor."""
    padding = _padding(config)
    if not padding:
        return tensor
    height, width = config.image_shape[:2]
    return tensor[:, padding : padding + height, padding : padding + width, :]


def check_noise(noise, latent_shapes, batch_size=None):
    """Validate per-group latent noise (decoder order) and convert it to float32.

    Args:
        noise: a list with one tensor per latent group.
        latent_shapes: the model's `latent_shapes`.
        batch_size: optional int the batch axis must equal.

    Returns:
        The list of float32 tensors.

    Raises:
        ValueError: wrong number of tensors or a wrong shape (named).
    """
    if len(noise) != len(latent_shapes):
        raise ValueError(
            f"`noise` must be a list of {len(latent_shapes)} tensors (one per latent "
            f"group, decoder order), got {len(noise)}."
        )
    checked = []
    for i, (eps, shape) in enumerate(zip(noise, latent_shapes)):
        eps = tf.cast(eps, tf.float32)
        wrong_batch = (
            isinstance(batch_size, int)
            and eps.shape[0] is not None
            and eps.shape[0] != batch_size
        )
        if tuple(eps.shape[1:]) != tuple(shape) or wrong_batch:
            raise ValueError(
                f"noise[{i}] must have shape (batch, {', '.join(map(str, shape))}), "
                f"got {tuple(eps.shape)}."
            )
        checked.append(eps)
    return checked


def check_temperature(temperature, num_groups):
    """Per-group prior temperatures from a float or a list of `num_groups` floats.

    A scalar tensor (graph callers such as the exported SavedModel) is used
    for every group unchecked.

    Args:
        temperature: a float > 0, or a list of `num_groups` floats > 0
            (decoder order: the top group first).
        num_groups: the model's number of latent groups.

    Returns:
        A list of `num_groups` temperatures.

    Raises:
        ValueError: a value <= 0 or not finite, or a list of the wrong length.
    """
    if tf.is_tensor(temperature) and temperature.shape.rank == 0:
        return [temperature] * num_groups
    if np.ndim(temperature) == 0:
        values = [temperature] * num_groups
    else:
        values = list(np.asarray(temperature, dtype=object).reshape(-1))
        if np.ndim(temperature) != 1 or len(values) != num_groups:
            raise ValueError(
                f"`temperature` must be a float or a list of {num_groups} floats (one per "
                f"latent group, decoder order), got {temperature!r}."
            )
    checked = []
    for value in values:
        try:
            value = float(value)
        except (TypeError, ValueError):
            value = float("nan")
        if not (np.isfinite(value) and value > 0):
            raise ValueError(
                f"`temperature` values must be finite floats > 0, got {temperature!r}."
            )
        checked.append(value)
    return checked


def check_output(output):
    """Raise a `ValueError` unless `output` is "mean" or "sample".

    Inference calls check it first, before they draw noise from the model's
    seed generator.
    """
    if isinstance(output, str) and output in ("mean", "sample"):
        return
    raise ValueError(
        "`output` must be 'mean' or 'sample' (the decoder mean or sampled pixels), "
        f"got {output!r}."
    )


def check_num_posterior_groups(num_posterior_groups, num_groups):
    """The number of top groups a reconstruction takes from the posterior.

    Args:
        num_posterior_groups: None (all groups) or an int in [0, num_groups].
        num_groups: the model's number of latent groups.

    Returns:
        The int.

    Raises:
        ValueError: not an int in [0, num_groups].
    """
    if num_posterior_groups is None:
        return num_groups
    value = num_posterior_groups
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not (
        0 <= value <= num_groups
    ):
        raise ValueError(
            f"`num_posterior_groups` must be an int in [0, {num_groups}] (how many latent "
            f"groups, from the top, come from the posterior), got {value!r}."
        )
    return int(value)


def reduce_bits(x01, num_bits):
    """Quantises 8-bit images in `[0, 1]` to `num_bits` bits per channel.

    Matches the official code: for `num_bits != 8`,
    `x = floor(x * 255 / 2 ** (8 - num_bits)) / (2 ** num_bits - 1)`, which
    keeps the values on the grid `k / (2 ** num_bits - 1)`.

    Args:
        x01: Float tensor with values `k / 255`.
        num_bits: Python int in `[1, 8]`.

    Returns:
        Tensor of the same shape; `x01` itself when `num_bits == 8`.
    """
    if num_bits == 8:
        return x01
    x01 = tf.convert_to_tensor(x01)
    x = tf.floor(x01 * 255.0 / 2.0 ** (8 - num_bits))
    return x / (2.0**num_bits - 1.0)


def epoch_steps(x, steps_per_epoch=None, batch_size=None, where="NVAE.fit", remedy=None):
    """The steps of one epoch of `fit(x, steps_per_epoch=..., batch_size=...)`.

    Args:
        x: a `tf.data.Dataset` of batches, or an array of images.
        steps_per_epoch: the caller's value; returned when given.
        batch_size: the batch size of an array `x` (default 32, as in `fit`).
        where: the function the error names.
        remedy: what the error tells the caller to do when the number is unknown.

    Returns:
        The number of steps (int).

    Raises:
        ValueError: `x` is an infinite or unknown-size dataset.
    """
    if steps_per_epoch is not None:
        return int(steps_per_epoch)
    if isinstance(x, tf.data.Dataset):
        cardinality = int(x.cardinality())
        if cardinality > 0:
            return cardinality
    elif hasattr(x, "shape"):
        return int(math.ceil(x.shape[0] / (batch_size or 32)))
    raise ValueError(
        f"{where} could not infer the number of steps per epoch (an infinite or "
        "unknown-size dataset). "
        + (remedy or "Pass `steps_per_epoch` to fit, or `total_steps` to compile.")
    )
