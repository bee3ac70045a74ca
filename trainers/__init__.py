"""The command-line programs under their user-facing names.

`python -m trainers.train` (and `trainers.evaluate`, `trainers.sample`,
`trainers.convert`, `trainers.tune`, `trainers.parity`) runs the program of
the same name in `keras_nvae.cli`; the installed commands `nvae-train`, ...
call the same `run` functions. TensorFlow's C++ log lines below warnings are
hidden (`TF_CPP_MIN_LOG_LEVEL=2` unless set), which has to happen before
`keras_nvae` imports TensorFlow. The start-up lines TensorFlow writes anyway
are held back until the program's flags have parsed (`StartUpOutput`), so
that a bad flag is answered by one line.
"""

import atexit
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class StartUpOutput:
    """Holds back what is written to standard error from `hold()` on.

    TensorFlow writes its start-up log lines from C++ straight to file
    descriptor 2, when it is imported and shortly after. The program calls
    `release()` once its flags have parsed (the held text is written then) or
    `discard()` before it reports a bad flag. At exit, text still held is
    written, so that nothing is lost (a traceback included).

    Example:

    ```python
    held = StartUpOutput()
    held.hold()
    import tensorflow  # its start-up lines are held
    held.release()     # and written here
    ```
    """

    def __init__(self):
        self._saved = None
        self._file = None

    def hold(self):
        """Send file descriptor 2 to a temporary file until `release` or `discard`."""
        sys.stderr.flush()
        self._file = tempfile.TemporaryFile()
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        atexit.register(self.release)

    def release(self):
        """Point file descriptor 2 back at standard error and write what was held."""
        text = self._restore()
        if text:
            sys.stderr.write(text)
            sys.stderr.flush()

    def discard(self):
        """Point file descriptor 2 back at standard error and drop what was held."""
        self._restore()

    def _restore(self):
        if self._saved is None:
            return ""
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._saved = None
        self._file.seek(0)
        text = self._file.read().decode(errors="replace")
        self._file.close()
        return text


def hold_start_up_output():
    """Hold standard error until `keras_nvae.cli.common` releases or discards it.

    Nothing is held in a process that has imported TensorFlow already (a
    test that loads the installed commands' entry points, for example).

    Returns:
        The `StartUpOutput`, holding.
    """
    held = StartUpOutput()
    if "tensorflow" not in sys.modules:  # only its first import writes these lines
        held.hold()
    return held
