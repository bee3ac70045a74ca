"""`keras_nvae.inference.grids.image_grid`: pixel layout, padding, enlargement, clipping."""

import numpy as np

from keras_nvae.inference.grids import image_grid


def _numbered(count, height=2, width=3, channels=1):
    """Images whose pixels all equal (index + 1) / 10, so each is recognisable in the grid."""
    values = (np.arange(count, dtype=np.float32) + 1) / 10
    return np.broadcast_to(values[:, None, None, None], (count, height, width, channels)).copy()


def test_images_fill_rows_left_to_right_with_grey_padding():
    grid = image_grid(_numbered(5), columns=3, padding=1)
    assert grid.shape == (2 * 3 + 1, 3 * 4 + 1, 1) and grid.dtype == np.float32
    for index in range(5):
        top, left = 1 + (index // 3) * 3, 1 + (index % 3) * 4
        np.testing.assert_allclose(grid[top : top + 2, left : left + 3], (index + 1) / 10)
    mask = np.ones(grid.shape, bool)
    for index in range(5):
        top, left = 1 + (index // 3) * 3, 1 + (index % 3) * 4
        mask[top : top + 2, left : left + 3] = False
    np.testing.assert_array_equal(grid[mask], 0.5)  # gaps, border and the empty sixth cell


def test_small_images_are_enlarged_by_an_integer_factor_with_wider_padding():
    image = np.array([[[0.0], [1.0]], [[0.25], [0.75]]], np.float32)[None]
    grid = image_grid(image, columns=1, padding=2, min_cell_size=5)
    scale = 3  # the smallest integer factor taking a height of 2 to at least 5
    assert grid.shape == (2 * scale + 4, 2 * scale + 4, 1)
    expected = np.repeat(np.repeat(image[0], scale, axis=0), scale, axis=1)
    np.testing.assert_array_equal(grid[2:-2, 2:-2], expected)
    np.testing.assert_array_equal(grid[:2], 0.5)


def test_values_are_clipped_to_the_unit_interval():
    images = np.array([-1.0, 2.0], np.float32).reshape(2, 1, 1, 1)
    grid = image_grid(images, columns=2, padding=0)
    np.testing.assert_array_equal(grid[..., 0], [[0.0, 1.0]])
