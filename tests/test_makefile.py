"""The Makefile's installs: `make demo` installs the package alone, `make test` adds the test
extras, and neither reinstalls what is installed (run against a stand-in for the venv's Python
that records what it is asked to do)."""

import os
import shutil
import subprocess
import time

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Records its arguments; `-c` (the Makefile's "is it installed?" check, last argument the last
# package) fails until an install has provided that package.
FAKE_PYTHON = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/../calls"
case "$1" in
  -c) for last; do :; done
      grep -qw -- "$last" "$(dirname "$0")/../calls.installed" 2>/dev/null ;;
  -m) if [ "$2" = pip ]; then
        case "$4 $5" in
          *test*) echo "pytest pytest-xdist torch keras_nvae" >> "$(dirname "$0")/../calls.installed" ;;
          *) echo "keras_nvae" >> "$(dirname "$0")/../calls.installed" ;;
        esac
      fi ;;
esac
"""


@pytest.fixture
def checkout(tmp_path):
    if shutil.which("make") is None:
        pytest.fail("`make` is needed to test the Makefile.")
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(os.path.join(REPO_ROOT, name), tmp_path)
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return tmp_path


def _make(checkout, target):
    calls = checkout / ".venv" / "calls"
    before = calls.read_text().splitlines() if calls.exists() else []
    subprocess.run(["make", "-s", target], cwd=checkout, check=True, capture_output=True)
    return [c for c in calls.read_text().splitlines()[len(before):] if not c.startswith("-c")]


def test_demo_installs_only_the_package_and_test_adds_the_extras(checkout):
    assert _make(checkout, "demo") == ["-m pip install -e .", "-m trainers.train"]
    assert _make(checkout, "test") == [
        "-m pip install -e .[test]",
        "-m pytest -q -n 2 --dist loadfile --durations=25 tests",
    ]
    assert _make(checkout, "demo") == ["-m trainers.train"]  # nothing reinstalled
    # A changed pyproject.toml reinstalls both.
    later = time.time() + 5
    os.utime(checkout / "pyproject.toml", (later, later))
    assert _make(checkout, "test")[:2] == ["-m pip install -e .", "-m pip install -e .[test]"]


def test_test_first_then_demo_installs_nothing_more(checkout):
    calls = _make(checkout, "test")
    assert calls[:2] == ["-m pip install -e .", "-m pip install -e .[test]"]
    assert _make(checkout, "demo") == ["-m trainers.train"]
