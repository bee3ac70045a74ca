"""Image grids: many images tiled into one picture, for TensorBoard and PNG files."""

import math

import numpy as np


def image_grid(images, columns, padding=1, min_cell_size=1):
    """Tile images into one grid image with grey (0.5) gaps.

    Image `i` goes to row `i // columns`, column `i % columns`; `padding`
    grey pixels separate the images and surround the grid, and cells left
    over in the last row stay grey.

    Args:
        images: float array (n, h, w, c); values are clipped to [0, 1].
        columns: images per row.
        padding: grey pixels between and around the (enlarged) images.
        min_cell_size: images of height below this are enlarged by the
            smallest integer factor (nearest neighbour) that makes their
            height at least this.

    Returns:
        A float32 array (rows * (h' + padding) + padding,
        columns * (w' + padding) + padding, c), h' and w' the enlarged sizes.

    Example:

    >>> grid = image_grid(np.zeros((6, 8, 8, 3)), columns=3)
    >>> grid.shape
    (19, 28, 3)
    """
    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    count, height, width, channels = images.shape
    scale = max(1, math.ceil(min_cell_size / height))
    images = np.repeat(np.repeat(images, scale, axis=1), scale, axis=2)
    height, width = height * scale, width * scale
    rows = math.ceil(count / columns)
    grid = np.full(
        (rows * (height + padding) + padding, columns * (width + padding) + padding, channels),
        0.5,
        np.float32,
    )
    for index, image in enumerate(images):
        top = padding + (index // columns) * (height + padding)
        left = padding + (index % columns) * (width + padding)
        grid[top : top + height, left : left + width] = image
    return grid
