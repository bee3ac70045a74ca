# keras_nvae: `make demo` trains the digits demo, `make test` runs the tests.
# Both create .venv (python3 -m venv) and install the package into it when needed.

PYTHON ?= python3
VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
# Refreshed whenever pyproject.toml changes, so the install reruns only then.
STAMP := $(VENV)/.installed

.PHONY: demo test clean

demo: $(STAMP)
	$(VENV_PYTHON) -m trainers.train

# Two worker processes, one test file each at a time; the 25 slowest tests are listed at the end.
test: $(STAMP)
	$(VENV_PYTHON) -m pytest -q -n 2 --dist loadfile --durations=25 tests

$(VENV_PYTHON):
	$(PYTHON) -m venv $(VENV)

# A venv that already has keras_nvae, pytest and pytest-xdist (but no stamp yet) is not reinstalled.
$(STAMP): pyproject.toml | $(VENV_PYTHON)
	@if [ ! -e $@ ] && $(VENV_PYTHON) -c "import importlib.metadata as m; m.version('keras_nvae'); m.version('pytest'); m.version('pytest-xdist')" 2>/dev/null; then \
		echo "keras_nvae and pytest are already installed in $(VENV)."; \
	else \
		$(VENV_PYTHON) -m pip install -e '.[test]'; \
	fi
	@touch $@

clean:
	rm -rf runs build dist keras_nvae.egg-info .pytest_cache
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +
