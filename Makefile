# nodulekit — the two commands of the README, plus a few helpers.
#   make test       install into .venv (once) and run every test, notebooks and the package's doctests included (QUICK mode)
#   make reproduce  install into .venv (once) and run the whole study (notebooks 01-06, full size; 06 needs ../shared/data)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
RUN_DIR ?= runs/reproduce

export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONHASHSEED := 0
export MPLBACKEND := Agg

.PHONY: install test test-fast reproduce bench clean

install: $(STAMP)

# Idempotent: re-installs only when pyproject.toml changes (or the venv is missing).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[notebooks,test,export,tune]"
	$(PY) -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $(STAMP)

# The package's docstring examples run in a pytest run of their own: with tests/ and notebooks/ in
# the same run, --doctest-modules would import both folders' conftest.py under one module name.
test: $(STAMP)
	rm -rf runs/quick  # a QUICK run folder from another configuration would be refused
	NODULEKIT_QUICK=1 $(PY) -m pytest tests notebooks --nbval-lax --nbval-current-env -p no:cacheprovider --durations=15
	NODULEKIT_QUICK=1 $(PY) -m pytest nodulekit --doctest-modules -q -p no:cacheprovider
	@echo "make test: reports above; notebook outputs went to runs/quick (QUICK mode)"

# Unit tests only, no notebooks (for a quick check while developing).
test-fast: $(STAMP)
	NODULEKIT_QUICK=1 $(PY) -m pytest tests -x -q -p no:cacheprovider

reproduce: $(STAMP)
	$(PY) -m nodulekit reproduce --run-dir $(RUN_DIR)

bench: $(STAMP)
	$(PY) benchmarks/run.py

clean:
	rm -rf runs .pytest_cache
