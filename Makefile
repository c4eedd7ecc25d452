# nodulekit — the two commands of the README, plus a few helpers.
#   make test       install into .venv (once) and run every test, notebooks and the package's doctests included (QUICK mode)
#   make reproduce  install into .venv (once) and run the whole study (notebooks 01-06, full size; 06 needs ../shared/data)
#   make lock       refresh requirements-lock.txt (the pinned versions `make install` uses; UPGRADE=1 takes the newest)
#   make wheel      build dist/nodulekit-*.whl (to upload to Colab, see the README)
#   make colab-check  install that wheel into a clean Python 3.12 with only Colab's packages and run notebook 01 (QUICK)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
RUN_DIR ?= runs/reproduce
# The pinned versions (written by uv; the committed results were measured with them) and the extras installed.
LOCK   := requirements-lock.txt
EXTRAS := notebooks,test,export,tune
# Maintenance tools (uv, build) live in their own venv, never in the project's.
TOOLS  := .tools
UV     := $(TOOLS)/bin/uv
UV_VERSION    := 0.13.9
BUILD_VERSION := 1.6.1
COLAB_PYTHON  ?= $(HOME)/.pyenv/versions/3.12.1/bin/python
COLAB_DIR     ?= /tmp/nodulekit-colab-check

export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONHASHSEED := 0
export MPLBACKEND := Agg
comma := ,

.PHONY: install test test-fast reproduce bench clean lock wheel colab-check

install: $(STAMP)

# Idempotent: re-installs only when pyproject.toml or the lock changes (or the venv is missing).
# The lock is a constraints file: every package is installed at its pinned version (CI included).
$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(LOCK) -e ".[$(EXTRAS)]"
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

$(UV):
	test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet "uv==$(UV_VERSION)" "build==$(BUILD_VERSION)"

# One lock for Python 3.10-3.12 on every platform (markers pick the versions); versions already in
# the lock are kept unless pyproject.toml needs others, or UPGRADE=1.
lock: $(UV)
	$(UV) pip compile pyproject.toml $(foreach extra,$(subst $(comma), ,$(EXTRAS)),--extra $(extra)) \
		--universal --python-version 3.10 --custom-compile-command "make lock" $(if $(UPGRADE),--upgrade) -o $(LOCK)

wheel: $(UV)
	rm -rf dist
	$(TOOLS)/bin/python -m build --wheel --outdir dist .

# Colab's route, checked: the wheel in a clean Python 3.12 holding only what Colab preinstalls; the
# notebook's own install cell installs it (NODULEKIT_SOURCE), taking its Colab branch.
colab-check: wheel
	bash .ci/colab-check dist/nodulekit-*.whl "$(COLAB_PYTHON)" "$(COLAB_DIR)"
