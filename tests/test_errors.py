"""`keras_nvae.errors.first_line`: the one-line quote of an exception in error messages."""

from keras_nvae.errors import first_line


def test_first_non_empty_line_with_the_exception_type():
    assert first_line(OSError("\n  \n  disk full  \nerrno 28")) == "OSError: disk full"
    assert first_line(ValueError("")) == "ValueError: "


def test_without_type_and_cut_at_the_limit():
    assert first_line(KeyError("abcdef"), limit=3, with_type=False) == "'ab..."
    assert first_line(RuntimeError("x" * 300), with_type=False) == "x" * 300
    assert first_line(RuntimeError("x" * 301), with_type=False) == "x" * 300 + "..."
    assert first_line(ValueError("\n"), with_type=False) == ""
