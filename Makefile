# keras_nvae: `make demo` trains the digits demo, `make test` runs the tests.
# Both create .venv (python3 -m venv) and install the package into it when needed: the demo
# only what training needs, the tests also the `test` extra (pytest, pytest-xdist, torch).

PYTHON ?= python3
VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
# Refreshed whenever pyproject.toml changes, so the installs rerun only then.
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
HAS := $(VENV_PYTHON) -c "import importlib.metadata as m, sys; [m.version(p) for p in sys.argv[1:]]"

.PHONY: demo test clean

demo: $(STAMP)
	$(VENV_PYTHON) -m trainers.train

# Two worker processes, one test file each at a time; the 25 slowest tests are listed at the end.
test: $(TEST_STAMP)
	$(VENV_PYTHON) -m pytest -q -n 2 --dist loadfile --durations=25 tests

$(VENV_PYTHON):
	$(PYTHON) -m venv $(VENV)

# A venv that already has what a stamp stands for (but no stamp yet) is not reinstalled.
$(STAMP): pyproject.toml | $(VENV_PYTHON)
	@if [ ! -e $@ ] && $(HAS) keras_nvae 2>/dev/null; then \
		echo "keras_nvae is already installed in $(VENV)."; \
	else \
		$(VENV_PYTHON) -m pip install -e .; \
	fi
	@touch $@

$(TEST_STAMP): $(STAMP)
	@if [ ! -e $@ ] && $(HAS) pytest pytest-xdist torch 2>/dev/null; then \
		echo "The test extras are already installed in $(VENV)."; \
	else \
		$(VENV_PYTHON) -m pip install -e '.[test]'; \
	fi
	@touch $@

clean:
	rm -rf runs build dist keras_nvae.egg-info .pytest_cache
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +
