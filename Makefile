# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo sim-demo test lint fuzz bench lock clean

# Installs the exact versions in constraints.txt (see its header; `make lock` moves them on): pip
# and setuptools first, then the project, built with that setuptools (no isolated build env, which
# would fetch the newest setuptools); tests/unit/test_lock.py checks .venv holds the lock exactly.
$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt pip setuptools
	$(PY) -m pip install --quiet --no-build-isolation -c constraints.txt -e '.[test]'
	touch $(STAMP)

# The main job: the demo cluster (JAX and sleep models) under load for 20 s, then a summary.
demo: $(STAMP)
	$(VENV)/bin/symphony demo

# Every scheduling policy on the reference example workload, side by side (simulated).
sim-demo: $(STAMP)
	$(VENV)/bin/symphony sim compare example

# Lint first (ruff, configured in pyproject.toml), then every test.
test: lint
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# More swarm seeds than the tests run: make fuzz SEEDS=10000
SEEDS ?= 1000
fuzz: $(STAMP)
	$(VENV)/bin/symphony sim fuzz --seed 1 --count $(SEEDS)

bench: $(STAMP)
	$(PY) -m load.bench.scheduling

# The newest versions pyproject.toml allows (pip and setuptools too), installed and written to
# constraints.txt with the header kept; then run make test and commit the file.
lock: $(STAMP)
	$(PY) -m pip install --quiet --upgrade pip setuptools
	$(PY) -m pip install --quiet --no-build-isolation --upgrade --upgrade-strategy eager -e '.[test]'
	{ grep '^#' constraints.txt; $(PY) -m pip freeze --all --exclude-editable | grep -v '^-e'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
