"""Cheap checks of PNG and JPEG files before a pipeline decodes them.

A file is read at its first and last bytes only: its signature says whether
it is a PNG or a JPEG at all, and its end whether it was written completely
(a JPEG ends with the end-of-image marker FF D9, a PNG with its IEND chunk).
That finds empty, truncated and non-image files at dataset creation, for
about as much time as opening the file; a file whose middle is corrupt
passes that check; it fails when it is decoded, and `decode_error` turns
that failure into a `BadImageFileError`.
"""

import contextlib
import os
import re
import threading
import warnings

import tensorflow as tf

from keras_nvae.errors import first_line

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"
# Some writers pad a JPEG after its end-of-image marker; entropy-coded data
# never holds FF D9, so a marker near the end means the file is complete.
_TAIL_BYTES = 1024
_LISTED = 5
# The prefix of the assertion that a pipeline raises for a file it cannot decode.
CORRUPT_MARKER = "keras_nvae cannot decode the image file "
CORRUPT_PROBLEM = "corrupt inside: its start and end look complete but it cannot be decoded"
_CORRUPT_PATTERN = re.compile(re.escape(CORRUPT_MARKER) + r"(.*?) \(" + re.escape(CORRUPT_PROBLEM))


class BadImageFileError(ValueError):
    """Image files that are empty, truncated, or not PNG or JPEG.

    Attributes:
        problems: list of `(path, what is wrong)` pairs.
    """

    def __init__(self, problems, total=None):
        self.problems = list(problems)
        counted = f"{len(self.problems)} of {total} image files" if total else "An image file"
        super().__init__(
            f"{counted} cannot be used: {describe(self.problems)}. Remove or replace "
            "them, or pass skip_bad_images=True (nvae-train: --skip_bad_images) to "
            "leave them out."
        )


def decode_error(error):
    """The `BadImageFileError` behind a pipeline's decoding failure, if it is one.

    Args:
        error: an exception raised while iterating over a dataset.

    Returns:
        A `BadImageFileError` naming the file that `keras_nvae.data` could not
        decode, or None if `error` is not that failure.
    """
    match = _CORRUPT_PATTERN.search(str(error))
    return BadImageFileError([(match.group(1), CORRUPT_PROBLEM)]) if match else None


@contextlib.contextmanager
def decode_errors_named():
    """Re-raises a pipeline's decoding failure inside the block as a `BadImageFileError`.

    Example:
    ```python
    with decode_errors_named():
        model.fit(load_image_folder("photos", 64))
    ```
    """
    try:
        yield
    except tf.errors.InvalidArgumentError as error:
        bad_image = decode_error(error)
        if bad_image is None:
            raise
        raise bad_image from None


class SkippedImages:
    """Counts the files a pipeline leaves out because they cannot be decoded.

    Each file is warned about once, with the count so far.

    Attributes:
        files: the files skipped, in the order they were found.
    """

    def __init__(self):
        self.files = []
        self._lock = threading.Lock()

    def record(self, path):
        """Note that `path` (bytes or str) could not be decoded and was left out."""
        path = path.decode() if isinstance(path, bytes) else str(path)
        with self._lock:
            if path in self.files:
                return
            self.files.append(path)
            count = len(self.files)
        warnings.warn(
            f"Skipping the image file {path} ({CORRUPT_PROBLEM}); {count} image "
            f"file{'s' if count > 1 else ''} skipped so far because they cannot be decoded.",
            stacklevel=2,
        )


def describe(problems):
    """'path (what is wrong); ...' for the first few problems."""
    text = "; ".join(f"{path} ({problem})" for path, problem in problems[:_LISTED])
    if len(problems) > _LISTED:
        text += f"; and {len(problems) - _LISTED} more"
    return text


def file_problem(path):
    """What is wrong with the image file `path`, or None if it looks complete.

    Args:
        path: a local or `tf.io.gfile` path.

    Returns:
        None, or a short description such as "empty file" or "truncated
        JPEG: no end-of-image marker".
    """
    try:
        with tf.io.gfile.GFile(path, "rb") as file:
            size = file.size()
            head = file.read(len(_PNG_SIGNATURE))
            file.seek(max(0, size - _TAIL_BYTES))
            tail = file.read()
    except (OSError, tf.errors.OpError) as error:
        return f"unreadable: {first_line(error, with_type=False)}"
    if size == 0:
        return "empty file"
    if head.startswith(_JPEG_SIGNATURE):
        return None if b"\xff\xd9" in tail else "truncated JPEG: no end-of-image marker"
    if head == _PNG_SIGNATURE:
        return None if b"IEND" in tail else "truncated PNG: no IEND chunk at its end"
    return f"not a PNG or JPEG: it starts with {head[:4]!r}"


def usable_files(paths, skip_bad_images=False):
    """The files of `paths` that pass `file_problem`.

    Args:
        paths: image file paths.
        skip_bad_images: leave bad files out, with a warning that counts and
            names them, instead of raising.

    Returns:
        The good paths, in their order.

    Raises:
        BadImageFileError: some files are bad and `skip_bad_images` is False,
            or every file is bad.
    """
    problems, good = [], []
    for path in paths:
        problem = file_problem(path)
        if problem is None:
            good.append(path)
        else:
            problems.append((path, problem))
    if problems and (not skip_bad_images or not good):
        raise BadImageFileError(problems, len(paths))
    if problems:
        warnings.warn(
            f"Skipping {len(problems)} of {len(paths)} image files under "
            f"{os.path.commonpath(paths)}: {describe(problems)}.",
            stacklevel=3,
        )
    return good
