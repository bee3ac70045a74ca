"""A JPEG whose start and end are intact but whose middle is corrupt.

The cheap check at dataset creation (`keras_nvae.data.image_files`) passes such a file; it fails
when decoded. `NVAE.fit` and `nvae-train` report it as a `BadImageFileError` naming the file,
without TensorFlow's trace; with `skip_bad_images` it is left out, named and counted.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import sklearn.datasets
import tensorflow as tf

from harness import lean_tiny
from keras_nvae import data
from keras_nvae import evaluation
from keras_nvae.training import optimizers

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _digit_images(n):
    """`n` scikit-learn digits as 16x16 RGB uint8 images."""
    digits = sklearn.datasets.load_digits().images[:n]
    images = np.repeat(np.repeat(digits * (255.0 / 16.0), 2, axis=1), 2, axis=2)
    return np.repeat(images[..., None], 3, axis=-1).round().astype(np.uint8)


def _corrupt_inside_jpeg():
    """A digit's JPEG with its headers and end marker intact and its scan data overwritten.

    The middle third of the entropy-coded data (between the start-of-scan header and the
    end-of-image marker) becomes random bytes, as a bad disk block would leave it. libjpeg
    decodes garbage without stray markers with only a warning; these bytes hold an `FF xx`
    that is no valid marker, which it rejects.
    """
    jpeg = tf.io.encode_jpeg(_digit_images(1)[0]).numpy()
    scan = jpeg.index(b"\xff\xda")
    start = scan + 2 + int.from_bytes(jpeg[scan + 2 : scan + 4], "big")
    third = (jpeg.rindex(b"\xff\xd9") - start) // 3
    garbage = np.random.RandomState(1).randint(0, 256, third).astype(np.uint8).tobytes()
    corrupt = jpeg[: start + third] + garbage + jpeg[start + 2 * third :]
    assert corrupt[: start + third] == jpeg[: start + third] and corrupt.endswith(b"\xff\xd9")
    with pytest.raises(tf.errors.InvalidArgumentError, match="Invalid JPEG data"):
        tf.io.decode_jpeg(corrupt)
    return corrupt


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """train/{a.png, b.jpg (corrupt inside), c.png} and test/{d.png}."""
    root = tmp_path_factory.mktemp("images")
    images = _digit_images(3)
    for split, names in (("train", ["a.png", "c.png"]), ("test", ["d.png"])):
        os.makedirs(root / split)
        for name, image in zip(names, images):
            (root / split / name).write_bytes(tf.io.encode_png(image).numpy())
    (root / "train" / "b.jpg").write_bytes(_corrupt_inside_jpeg())
    return root


def test_fit_names_the_corrupt_file_and_skipping_counts_it(folder):
    bad = str(folder / "train" / "b.jpg")
    dataset = data.load_image_folder(str(folder / "train"), 16, batch_size=3, shuffle=False)
    assert int(dataset.cardinality()) == 1
    model = lean_tiny()
    model.compile(optimizer=optimizers.NVAEAdamax(1e-3), total_steps=2)
    with pytest.raises(data.BadImageFileError) as error:
        model.fit(dataset, epochs=1, verbose=0)
    assert str(error.value) == (
        f"An image file cannot be used: {bad} (corrupt inside: its start and end look "
        "complete but it cannot be decoded). Remove or replace them, or pass "
        "skip_bad_images=True (nvae-train: --skip_bad_images) to leave them out."
    )
    assert error.value.__suppress_context__ and error.value.problems[0][0] == bad
    assert int(model.global_step.numpy()) == 0
    for reader in (
        lambda: model.evaluate(dataset, verbose=0),
        lambda: model.predict(dataset, verbose=0),
        lambda: evaluation.bits_per_dim(model, dataset, num_samples=1, verbose=0),
        lambda: evaluation.scores(model, dataset, num_samples=1),
    ):
        with pytest.raises(data.BadImageFileError) as read_error:
            reader()
        assert str(read_error.value) == str(error.value)
    skipping = data.load_image_folder(
        str(folder / "train"), 16, batch_size=3, shuffle=False, skip_bad_images=True
    )
    with pytest.warns(UserWarning) as caught:
        history = model.fit(skipping, epochs=1, verbose=0)
    skipped = [str(w.message) for w in caught if "Skipping the image file" in str(w.message)]
    assert skipped == [
        f"Skipping the image file {bad} (corrupt inside: its start and end look complete but "
        "it cannot be decoded); 1 image file skipped so far because they cannot be decoded."
    ]
    assert int(model.global_step.numpy()) == 1 and np.isfinite(history.history["loss"][0])
    images = np.concatenate(list(skipping))
    np.testing.assert_array_equal(images, _digit_images(2))


def test_nvae_train_prints_one_paragraph_naming_the_corrupt_file(folder, tmp_path):
    output_dir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable, "-m", "trainers.train", "--preset=tiny", f"--dataset={folder}",
            "--override=num_latent_scales=1", "--override=num_flows=0", "--batch_size=3",
            "--epochs=1", "--eval_samples=2", f"--output_dir={output_dir}",
        ],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "InvalidArgumentError" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        f"train: error: An image file cannot be used: {folder / 'train' / 'b.jpg'} (corrupt "
        "inside: its start and end look complete but it cannot be decoded). Remove or replace "
        "them, or pass skip_bad_images=True (nvae-train: --skip_bad_images) to leave them out. "
        "Training stopped before its first save; nothing was kept."
    ), result.stderr
