"""Cheap checks of PNG and JPEG files before a pipeline decodes them.

A file is read at its first and last bytes only: its signature says whether
it is a PNG or a JPEG at all, and its end whether it was written completely
(a JPEG ends with the end-of-image marker FF D9, a PNG with its IEND chunk).
That finds empty, truncated and non-image files at dataset creation, for
about as much time as opening the file; a file whose middle is corrupt
passes and fails when it is decoded.
"""

import os
import warnings

import tensorflow as tf

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"
# Some writers pad a JPEG after its end-of-image marker; entropy-coded data
# never holds FF D9, so a marker near the end means the file is complete.
_TAIL_BYTES = 1024
_LISTED = 5


class BadImageFileError(ValueError):
    """Image files that are empty, truncated, or not PNG or JPEG.

    Attributes:
        problems: list of `(path, what is wrong)` pairs.
    """

    def __init__(self, problems, total):
        self.problems = list(problems)
        super().__init__(
            f"{len(self.problems)} of {total} image files cannot be used: "
            f"{describe(self.problems)}. Remove or replace them, or pass "
            "skip_bad_images=True (nvae-train: --skip_bad_images) to leave them out."
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
        return f"unreadable: {str(error).strip().splitlines()[0]}"
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
