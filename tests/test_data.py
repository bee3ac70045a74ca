"""Tests for keras_nvae.data (offline; no dataset downloads)."""

import numpy as np
import pytest
import tensorflow as tf

from keras_nvae import data


def _collect(ds):
    return np.concatenate([batch.numpy() for batch in ds])


def _rows(images):
    """Sorted list of images as bytes, to compare image multisets."""
    return sorted(image.tobytes() for image in images)


# ---------------------------------------------------------------------------
# Digits.
# ---------------------------------------------------------------------------


def test_digits_arrays_shape_dtype_range():
    train = data.digits_arrays("train")
    test = data.digits_arrays("test")
    assert train.shape == (1438, 8, 8, 1) and test.shape == (359, 8, 8, 1)
    assert train.dtype == np.uint8 and test.dtype == np.uint8
    assert train.min() == 0 and train.max() == 255


def test_digits_split_is_deterministic_disjoint_partition():
    from sklearn.datasets import load_digits

    everything = np.round(load_digits().images * 255 / 16).astype(np.uint8)
    train, test = data.digits_arrays("train"), data.digits_arrays("test")
    np.testing.assert_array_equal(train, data.digits_arrays("train"))
    np.testing.assert_array_equal(test, data.digits_arrays("test", split_seed=0))
    # Together the splits are exactly the full data set, each image once.
    assert _rows(np.concatenate([train, test])[..., 0]) == _rows(everything)
    # A different split seed gives a different split of the same size.
    other = data.digits_arrays("test", split_seed=1)
    assert other.shape == test.shape and not np.array_equal(other, test)


def test_digits_shuffle_seed_does_not_move_the_split():
    # Runs with different seeds must evaluate on the same held-out images.
    for seed in (None, 3, 7):
        for split in ("train", "test"):
            shuffled = _collect(data.load_digits(split, batch_size=2000, seed=seed))
            assert _rows(shuffled) == _rows(data.digits_arrays(split))
            made = _collect(data.make_dataset("digits", split, batch_size=2000, seed=seed))
            assert _rows(made) == _rows(data.digits_arrays(split))
    moved = _collect(data.load_digits("test", batch_size=2000, split_seed=1))
    assert _rows(moved) == _rows(data.digits_arrays("test", split_seed=1))
    assert _rows(moved) != _rows(data.digits_arrays("test"))


def test_digits_split_validation():
    with pytest.raises(ValueError, match="train.*test"):
        data.digits_arrays("validation")
    with pytest.raises(ValueError, match="test_fraction"):
        data.digits_arrays("train", test_fraction=1.5)


def test_load_digits_batches_cover_split_once():
    ds = data.load_digits("test", batch_size=100)
    batches = [batch.numpy() for batch in ds]
    assert [len(b) for b in batches] == [100, 100, 100, 59]
    assert all(b.dtype == np.uint8 and b.shape[1:] == (8, 8, 1) for b in batches)
    assert _rows(np.concatenate(batches)) == _rows(data.digits_arrays("test"))


def test_load_digits_shuffle_seeded_and_reshuffled_each_epoch():
    ds = data.load_digits("train", batch_size=2000, seed=3)
    first, second = _collect(ds), _collect(ds)
    same_seed = data.load_digits("train", batch_size=2000, seed=3)
    np.testing.assert_array_equal(first, _collect(same_seed))
    assert not np.array_equal(first, second)
    assert _rows(first) == _rows(second)
    unshuffled = _collect(data.load_digits("train", batch_size=2000, shuffle=False))
    np.testing.assert_array_equal(unshuffled, data.digits_arrays("train"))


def test_load_digits_repeat_and_drop_remainder():
    ds = data.load_digits("test", batch_size=100, repeat=True, drop_remainder=True)
    assert ds.element_spec.shape.as_list() == [100, 8, 8, 1]
    assert len(list(ds.take(7))) == 7


# ---------------------------------------------------------------------------
# from_numpy.
# ---------------------------------------------------------------------------


def test_from_numpy_grayscale_rank3_gets_channel_axis():
    ds = data.from_numpy(np.zeros((5, 6, 7), np.uint8), batch_size=2, shuffle=False)
    assert [b.shape for b in ds] == [(2, 6, 7, 1), (2, 6, 7, 1), (1, 6, 7, 1)]


def test_from_numpy_float_inputs_become_float32():
    images = np.linspace(0, 1, 5 * 4 * 4 * 3).reshape(5, 4, 4, 3)  # float64
    out = _collect(data.from_numpy(images, batch_size=5, shuffle=False))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, images, rtol=1e-6)


@pytest.mark.parametrize(
    "images, message",
    [
        (np.zeros((4, 8), np.uint8), r"\(N, H, W, C\).*shape \(4, 8\)"),
        (np.zeros((2, 3, 4, 4, 1), np.uint8), r"\(N, H, W, C\)"),
        (np.zeros((2, 4, 4, 2), np.uint8), "1 \\(grayscale\\) or 3 \\(RGB\\)"),
        (np.zeros((2, 3, 8, 8), np.uint8), "channels-first.*np.transpose"),
        (np.zeros((0, 4, 4, 1), np.uint8), "at least one image"),
        (np.full((2, 4, 4, 1), 2.0, np.float32), r"\[0, 1\].*divide by 255"),
        (np.full((2, 4, 4, 1), -0.5, np.float32), r"\[0, 1\]"),
        (np.full((2, 4, 4, 1), np.nan, np.float32), "finite"),
        (np.zeros((2, 4, 4, 1), np.int64), "dtype int64.*astype\\(np.uint8\\)"),
        (np.zeros((2, 4, 4, 1), bool), "dtype bool"),
    ],
)
def test_from_numpy_validation_errors(images, message):
    with pytest.raises(ValueError, match=message):
        data.from_numpy(images, batch_size=2)


def test_from_numpy_rejects_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        data.from_numpy(np.zeros((2, 4, 4, 1), np.uint8), batch_size=0)


# ---------------------------------------------------------------------------
# Binarisation and flips.
# ---------------------------------------------------------------------------


def test_dynamic_binarize_statistics_uint8_and_float():
    uint8_images = np.full((200, 16, 16, 1), 64, np.uint8)
    float_images = np.full((200, 16, 16, 1), 0.75, np.float32)
    for images, p in [(uint8_images, 64 / 255), (float_images, 0.75)]:
        out = data.dynamic_binarize(images).numpy()
        assert out.dtype == np.float32 and set(np.unique(out)) <= {0.0, 1.0}
        assert abs(out.mean() - p) < 0.01  # 51,200 Bernoulli draws.
    extremes = tf.constant([[0, 255], [0, 255]], tf.uint8)
    np.testing.assert_array_equal(
        data.dynamic_binarize(extremes, seed=[0, 1]), [[0.0, 1.0], [0.0, 1.0]]
    )
    with pytest.raises(ValueError, match="int32"):
        data.dynamic_binarize(tf.zeros([2], tf.int32))


def test_dynamic_binarize_seeded_is_deterministic():
    images = tf.fill([64, 8, 8, 1], 0.5)
    a = data.dynamic_binarize(images, seed=[1, 2])
    np.testing.assert_array_equal(a, data.dynamic_binarize(images, seed=[1, 2]))
    assert not np.array_equal(a, data.dynamic_binarize(images, seed=[1, 3]))


def test_binarized_pipeline_resamples_every_epoch_and_is_seeded():
    # Pixel intensity varies per image so that the mean is image-dependent.
    images = np.repeat(np.arange(0, 256, 4, dtype=np.uint8), 64).reshape(64, 8, 8, 1)
    ds = data.from_numpy(images, batch_size=64, shuffle=False, binarize=True, seed=5)
    first, second = _collect(ds), _collect(ds)
    assert first.dtype == np.float32 and set(np.unique(first)) <= {0.0, 1.0}
    assert not np.array_equal(first, second)
    again = data.from_numpy(images, batch_size=64, shuffle=False, binarize=True, seed=5)
    np.testing.assert_array_equal(first, _collect(again))
    # Per-image frequency of ones tracks intensity / 255.
    expected = images.reshape(64, -1).mean(axis=1) / 255
    assert np.abs(first.reshape(64, -1).mean(axis=1) - expected).max() < 0.25
    assert abs(first.mean() - expected.mean()) < 0.03


def test_flip_mirrors_about_half_of_the_images():
    images = np.zeros((400, 4, 5, 3), np.uint8)
    images[:, :, 0, :] = 255  # Bright left column; flipped -> right column.
    ds = data.from_numpy(images, batch_size=64, shuffle=False, flip=True, seed=0)
    out = _collect(ds)
    assert out.dtype == np.uint8 and out.shape == images.shape
    flipped = np.all(out == images[:, :, ::-1, :], axis=(1, 2, 3))
    kept = np.all(out == images, axis=(1, 2, 3))
    assert np.all(flipped ^ kept)
    assert 0.4 < flipped.mean() < 0.6
    unflipped = _collect(data.from_numpy(images, batch_size=64, shuffle=False))
    np.testing.assert_array_equal(unflipped, images)


# ---------------------------------------------------------------------------
# Image folders.
# ---------------------------------------------------------------------------


def _write_png(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.io.encode_png(image).numpy())


@pytest.fixture
def image_folder(tmp_path):
    # 3x9 image whose centre 3x3 square is 200, the sides 0.
    wide = np.zeros((3, 9, 3), np.uint8)
    wide[:, 3:6] = 200
    _write_png(tmp_path / "a.png", wide)
    _write_png(tmp_path / "nested" / "b.PNG", np.full((5, 5, 3), 100, np.uint8))
    jpeg = tf.io.encode_jpeg(np.full((6, 4, 3), 50, np.uint8), quality=100)
    (tmp_path / "nested" / "c.jpg").write_bytes(jpeg.numpy())
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_load_image_folder_crops_resizes_and_recurses(image_folder):
    ds = data.load_image_folder(
        str(image_folder), image_size=3, batch_size=8, shuffle=False
    )
    out = _collect(ds)
    assert out.shape == (3, 3, 3, 3) and out.dtype == np.uint8
    # Files are read in sorted order: a.png, nested/b.PNG, nested/c.jpg.
    np.testing.assert_array_equal(out[0], 200)
    np.testing.assert_array_equal(out[1], 100)
    assert np.abs(out[2].astype(int) - 50).max() <= 2  # JPEG rounding.


def test_load_image_folder_grayscale_uncached_shuffled(image_folder):
    ds = data.load_image_folder(
        image_folder, image_size=2, batch_size=2, channels=1, cache=False, seed=1
    )
    out = _collect(ds)
    assert out.shape == (3, 2, 2, 1)
    gray = np.sort(out[:, 0, 0, 0].astype(int))
    assert np.abs(gray - [50, 100, 200]).max() <= 2


def test_load_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_image_folder(str(tmp_path / "missing"), image_size=4)
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match="No PNG or JPEG images"):
        data.load_image_folder(str(tmp_path), image_size=4)


# ---------------------------------------------------------------------------
# TensorFlow Datasets (offline).
# ---------------------------------------------------------------------------


def test_load_tfds_offline_error_message(tmp_path):
    with pytest.raises(data.DatasetNotAvailableError) as info:
        data.load_tfds("mnist", "train", batch_size=8, data_dir=str(tmp_path))
    error = info.value
    assert isinstance(error, FileNotFoundError)
    assert error.name == "mnist" and error.data_dir == str(tmp_path)
    message = str(error)
    assert "'mnist'" in message and str(tmp_path) in message
    assert f"tfds build mnist --data_dir {tmp_path}" in message
    assert "download=True" in message and "copy" in message


def test_load_tfds_failed_download_is_wrapped(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    def offline(self, *args, **kwargs):
        raise ConnectionError("Failed to resolve 'storage.googleapis.com'")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(data.DatasetNotAvailableError) as info:
        data.load_tfds("cifar10", data_dir=str(tmp_path), download=True)
    message = str(info.value)
    assert "ConnectionError: Failed to resolve" in message
    assert f"tfds build cifar10 --data_dir {tmp_path}" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_load_tfds_manual_download_dataset_explains_manual_dir(tmp_path):
    with pytest.raises(data.DatasetNotAvailableError, match="manual_dir") as info:
        data.load_tfds("celeba256", data_dir=str(tmp_path))
    assert "celeb_a_hq/256" in str(info.value)


def test_load_tfds_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="no dataset named 'not_a_dataset'.*cifar10"):
        data.load_tfds("not_a_dataset", data_dir=str(tmp_path))


@pytest.fixture
def mock_tfds(monkeypatch):
    """Pretends every TFDS dataset is prepared and serves `as_dataset_fn` data."""
    import tensorflow_datasets as tfds

    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)

    def mock(as_dataset_fn=None, num_examples=6):
        return tfds.testing.mock_data(
            num_examples=num_examples, as_dataset_fn=as_dataset_fn
        )

    return mock


def test_load_tfds_mnist_preset_binarizes(mock_tfds):
    with mock_tfds(num_examples=10):
        ds = data.load_tfds("mnist", "test", batch_size=4)
        out = _collect(ds)
    assert out.shape == (10, 28, 28, 1) and out.dtype == np.float32
    assert set(np.unique(out)) <= {0.0, 1.0}


def test_load_tfds_binarized_mnist_is_float(mock_tfds):
    def as_dataset(self, split, **kwargs):
        images = np.random.default_rng(0).integers(0, 2, (5, 28, 28, 1), np.uint8)
        return tf.data.Dataset.from_tensor_slices({"image": images})

    with mock_tfds(as_dataset):
        out = _collect(data.load_tfds("binarized_mnist", batch_size=5, shuffle=False))
    assert out.dtype == np.float32 and 0.3 < out.mean() < 0.7
    assert set(np.unique(out)) == {0.0, 1.0}


def test_load_tfds_celeba_nvae_crop_and_flip_default(mock_tfds):
    # Bright exactly inside NVAE's crop box (left 15, top 40, right 163,
    # bottom 188) of a 218x178 CelebA image, dark elsewhere.
    image = np.zeros((218, 178, 3), np.uint8)
    image[40:188, 15:163] = 255
    image[40:188, 15:30, 0] = 0  # Marker on the left to detect flips.
    requested_splits = []

    def as_dataset(self, split, **kwargs):
        requested_splits.append(split)
        return tf.data.Dataset.from_tensor_slices({"image": np.stack([image] * 64)})

    with mock_tfds(as_dataset):
        train = _collect(data.load_tfds("celeba64", "train", batch_size=32, seed=0))
        test = _collect(data.load_tfds("celeb_a", "validation", batch_size=32))
    assert train.shape == (64, 64, 64, 3) and train.dtype == np.uint8
    assert requested_splits == ["train", "validation"]
    # Only the box is kept: green and blue channels are 255 everywhere.
    assert train[..., 1:].min() == 255
    # Without flips the red marker is on the left in every test image ...
    assert np.all(test[:, :, 0, 0] == 0) and np.all(test[:, :, -1, 0] == 255)
    # ... while train images are flipped about half of the time.
    flipped = np.mean(train[:, 32, -1, 0] == 0)
    assert 0.2 < flipped < 0.8


def test_load_tfds_imagenet32_test_split_alias(mock_tfds):
    requested_splits = []

    def as_dataset(self, split, **kwargs):
        requested_splits.append(split)
        images = np.zeros((3, 32, 32, 3), np.uint8)
        return tf.data.Dataset.from_tensor_slices({"image": images})

    with mock_tfds(as_dataset):
        out = _collect(data.load_tfds("imagenet32", "test", batch_size=2))
    assert requested_splits == ["validation"] and out.shape == (3, 32, 32, 3)


# ---------------------------------------------------------------------------
# make_dataset.
# ---------------------------------------------------------------------------


def test_make_dataset_digits():
    ds = data.make_dataset("digits", "test", batch_size=400)
    out = _collect(ds)
    np.testing.assert_array_equal(out, data.digits_arrays("test"))  # test: unshuffled
    with pytest.raises(ValueError, match="image_size=16"):
        data.make_dataset("digits", "train", batch_size=4, image_size=16)


def test_make_dataset_npy_and_npz(tmp_path):
    train = np.random.default_rng(0).integers(0, 256, (6, 4, 4, 3), np.uint8)
    test = np.zeros((2, 4, 4, 3), np.uint8)
    np.save(tmp_path / "x.npy", train)
    np.savez(tmp_path / "splits.npz", train=train, test=test)
    out = _collect(data.make_dataset(str(tmp_path / "x.npy"), "train", batch_size=4))
    assert _rows(out) == _rows(train)
    out = _collect(data.make_dataset(tmp_path / "splits.npz", "test", batch_size=4))
    np.testing.assert_array_equal(out, test)
    ds = data.make_dataset(tmp_path / "splits.npz", batch_size=6, binarize=True)
    assert _collect(ds).dtype == np.float32
    with pytest.raises(ValueError, match="single image array.*'test'"):
        data.make_dataset(str(tmp_path / "x.npy"), "test", batch_size=4)
    with pytest.raises(ValueError, match="no array named 'validation'"):
        data.make_dataset(str(tmp_path / "splits.npz"), "validation", batch_size=4)
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        data.make_dataset(str(tmp_path / "missing.npy"), "train", batch_size=4)


def test_make_dataset_folder_with_split_subfolders(tmp_path):
    _write_png(tmp_path / "train" / "a.png", np.full((4, 4, 3), 10, np.uint8))
    _write_png(tmp_path / "test" / "b.png", np.full((4, 4, 3), 20, np.uint8))
    out = _collect(data.make_dataset(str(tmp_path), "test", batch_size=2, image_size=4))
    assert out.shape == (1, 4, 4, 3) and np.all(out == 20)
    with pytest.raises(ValueError, match="image_size is required"):
        data.make_dataset(str(tmp_path), "train", batch_size=2)


def test_make_dataset_flat_folder_is_train_only(image_folder):
    ds = data.make_dataset(str(image_folder), "train", batch_size=2, image_size=2)
    out = _collect(ds)
    assert out.shape == (3, 2, 2, 3)
    with pytest.raises(ValueError, match="no 'test' subfolder"):
        data.make_dataset(str(image_folder), "test", batch_size=2, image_size=2)


def test_make_dataset_tfds_offline_and_unknown(tmp_path):
    with pytest.raises(data.DatasetNotAvailableError, match="cifar10"):
        data.make_dataset("cifar10", "train", batch_size=4, data_dir=str(tmp_path))
    options = "Unknown data source 'nope'.*'digits'.*folder.*npz.*mnist"
    with pytest.raises(ValueError, match=options):
        data.make_dataset("nope", "train", batch_size=4, data_dir=str(tmp_path))
