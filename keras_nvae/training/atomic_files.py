"""Files written atomically: under a temporary name, synced, then renamed.

A kill during a write leaves either the old file or the new one, never a
truncated file.
"""

import contextlib
import json
import os

TEMPORARY_SUFFIX = ".tmp"


def temporary_path(path):
    """The name `path` is written under before it is renamed to `path`.

    The temporary name keeps the extension, which some writers require
    (`model.keras` -> `model.tmp.keras`, `a.weights.h5` -> `a.tmp.weights.h5`).
    """
    directory, name = os.path.split(path)
    stem, dot, extension = name.partition(".")
    return os.path.join(directory, f"{stem}{TEMPORARY_SUFFIX}{dot}{extension}")


def _commit(temporary, path):
    """Rename the finished temporary file to its final name (one atomic step)."""
    os.replace(temporary, path)


def _sync_file(path):
    with open(path, "rb+") as file:
        os.fsync(file.fileno())


def _sync_directory(directory):
    if hasattr(os, "O_DIRECTORY"):
        descriptor = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path to write `path` under; rename it when the block ends.

    The file written at the temporary path is flushed to disk and renamed to
    `path`, so `path` is never seen half-written. If the block raises, the
    temporary file is removed and `path` is untouched.

    Args:
        path: the final file name.

    Yields:
        The temporary path (same folder and extension).
    """
    temporary = temporary_path(path)
    try:
        yield temporary
        _sync_file(temporary)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
    _commit(temporary, path)
    _sync_directory(os.path.dirname(path))


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a file that appears at `path` only once it is completely written.

    Args:
        path: the final file name.
        mode: "wb" or "w".

    Yields:
        The open temporary file.

    Example:
    ```python
    with atomic_write("metrics.json", "w") as file:
        json.dump(metrics, file)
    ```
    """
    with atomic_path(path) as temporary:
        with open(temporary, mode) as file:
            yield file


def write_json(path, value):
    """Write `value` as indented JSON to `path` atomically."""
    with atomic_write(path, "w") as file:
        json.dump(value, file, indent=2)


def save_model(model, path):
    """`model.save(path)` written atomically (a kill never leaves a broken `.keras`)."""
    with atomic_path(path) as temporary:
        model.save(temporary)
