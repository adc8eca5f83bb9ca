# The two commands a new user needs: `make demo` and `make test`. Both create .venv and
# install the pinned dependencies (requirements.lock) on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fitfed-installed
TEST_STAMP := $(VENV)/.fitfed-test-installed
# The base install includes the privacy extra: `nvflare provision` needs TenSEAL for the HE contexts in kits.
# `make test` adds the spark extra (PySpark, ~450 MB) for databricks_bridge's Spark test; without Java it skips.
TEST_EXTRAS ?= dev,bridge,privacy,spark

.PHONY: demo test lint jobs clean

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements.lock -e ".[dev,bridge,privacy]"
	@touch $@

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements.lock -e ".[$(TEST_EXTRAS)]"
	@touch $@

demo: $(STAMP)
	$(VENV)/bin/fitfed demo

test: lint $(TEST_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check custom jobs tests databricks_bridge benchmarks attack_harness
	$(VENV)/bin/ruff format --check --quiet custom jobs tests databricks_bridge benchmarks attack_harness

jobs: $(STAMP)
	$(VENV)/bin/fitfed jobs export

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
