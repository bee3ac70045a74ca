"""Size limits of the library code: modules <= 500 lines, classes <= 400, functions <= 60.

The limits apply to every `.py` file under `keras_nvae/` and `trainers/`. A module's length is
its number of lines. A class's length is `end_lineno - lineno + 1` as `ast` reports it: from its
`class` line to its last line, docstring and methods included, decorators excluded (in Python
>= 3.8 `lineno` is the line of the `def`/`class` keyword, not of the first decorator). A
function's length is counted over the same span, from its `def` line to its last line with its
docstring, but without blank lines: a function that needs more than 60 written lines, its
documentation included, holds more than one step and is split into named helpers.
"""

import ast
import os
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("keras_nvae", "trainers")
MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 400
MAX_FUNCTION_LINES = 60
_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def _written_lines(lines, node):
    return sum(1 for line in lines[node.lineno - 1 : node.end_lineno] if line.strip())


def oversized_definitions(source, filename):
    """Lists the module, classes and functions of `source` that exceed the limits.

    Args:
        source: Python source text.
        filename: the name to report offenders under.

    Returns:
        A list of `"filename:line kind name: N lines (limit L)"` strings, in source order.
    """
    offenders = []
    lines = source.splitlines()
    module_lines = len(lines)
    if module_lines > MAX_MODULE_LINES:
        offenders.append(
            (0, f"{filename}:1 module: {module_lines} lines (limit {MAX_MODULE_LINES})")
        )
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.ClassDef):
            kind, limit = "class", MAX_CLASS_LINES
            length = node.end_lineno - node.lineno + 1
        elif isinstance(node, _FUNCTIONS):
            kind, limit = "function", MAX_FUNCTION_LINES
            length = _written_lines(lines, node)
        else:
            continue
        if length > limit:
            message = f"{filename}:{node.lineno} {kind} {node.name}: {length} lines (limit {limit})"
            offenders.append((node.lineno, message))
    return [message for _, message in sorted(offenders)]


def _library_files():
    for package in PACKAGES:
        for directory, _, names in os.walk(os.path.join(ROOT, package)):
            for name in sorted(names):
                if name.endswith(".py"):
                    yield os.path.join(directory, name)


def _function_source(name, body_lines, decorators=0, docstring_lines=0):
    docstring = ""
    if docstring_lines:
        docstring = '    """\n' + "    doc\n" * (docstring_lines - 2) + '    """\n'
    body = "\n".join(f"    x{i} = {i}" for i in range(body_lines - 1))
    return "@staticmethod\n" * decorators + f"def {name}():\n{docstring}{body}\n"


def test_library_files_are_found():
    files = [os.path.relpath(path, ROOT) for path in _library_files()]
    assert os.path.join("keras_nvae", "network.py") in files
    assert os.path.join("keras_nvae", "cli", "train.py") in files
    assert os.path.join("trainers", "train.py") in files


def test_checker_flags_a_function_one_line_over_the_limit():
    source = _function_source("fits", MAX_FUNCTION_LINES) + _function_source(
        "too_long", MAX_FUNCTION_LINES + 1
    )
    assert oversized_definitions(source, "m.py") == [
        f"m.py:{MAX_FUNCTION_LINES + 1} function too_long: "
        f"{MAX_FUNCTION_LINES + 1} lines (limit 60)"
    ]


def test_checker_counts_docstrings_but_not_decorators_blank_lines_or_classes_twice():
    decorated = _function_source("decorated", MAX_FUNCTION_LINES, decorators=3)
    assert oversized_definitions(decorated, "m.py") == []
    spaced = _function_source("spaced", MAX_FUNCTION_LINES).replace("\n    x", "\n\n    x")
    assert oversized_definitions(spaced, "m.py") == []
    documented = _function_source("documented", MAX_FUNCTION_LINES - 19, docstring_lines=20)
    assert oversized_definitions(documented, "m.py") == [
        f"m.py:1 function documented: {MAX_FUNCTION_LINES + 1} lines (limit 60)"
    ]
    method = textwrap.indent(_function_source("method", MAX_FUNCTION_LINES + 1), "    ")
    filler = "".join(f"    a{i} = {i}\n" for i in range(MAX_CLASS_LINES - MAX_FUNCTION_LINES - 1))
    source = "class Big:\n" + method + filler
    assert oversized_definitions(source, "m.py") == [
        f"m.py:1 class Big: {MAX_CLASS_LINES + 1} lines (limit 400)",
        f"m.py:2 function method: {MAX_FUNCTION_LINES + 1} lines (limit 60)",
    ]


def test_checker_flags_a_module_one_line_over_the_limit():
    fits = "x = 0\n" * MAX_MODULE_LINES
    assert oversized_definitions(fits, "m.py") == []
    assert oversized_definitions(fits + "y = 1\n", "m.py") == [
        f"m.py:1 module: {MAX_MODULE_LINES + 1} lines (limit 500)"
    ]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_definition_exceeds_the_size_limits(package):
    offenders = []
    for path in _library_files():
        relative = os.path.relpath(path, ROOT)
        if relative.split(os.sep)[0] != package:
            continue
        with open(path, encoding="utf-8") as f:
            offenders += oversized_definitions(f.read(), relative)
    assert not offenders, "definitions over the size limits; split them:\n" + "\n".join(offenders)

