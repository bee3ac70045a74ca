"""One-line summaries of exceptions, for the error messages keras_nvae raises."""


def first_line(error, limit=300, with_type=True):
    """The first non-empty line of `error`'s message, to quote inside another message.

    Args:
        error: an exception (or any object; its `str` is used).
        limit: longer lines are cut to this many characters and end in "...".
        with_type: start with the exception's class name, as in
            `"OSError: No such file"`.

    Returns:
        A string without line breaks (the empty string for an empty message
        without `with_type`).

    Example:

    >>> first_line(ValueError("bad shape\\nmore detail"))
    'ValueError: bad shape'
    """
    text = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"{type(error).__name__}: {text}" if with_type else text
