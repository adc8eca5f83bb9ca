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
# Flower (round_latency benchmark only) cannot share .venv: flwr 1.41 needs protobuf<7, requirements.lock pins 7.
FLOWER_VENV := .venv-flower
FLOWER_STAMP := $(FLOWER_VENV)/.fitfed-installed
NAME ?= all

.PHONY: demo test lint jobs bench clean

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements.lock -e ".[dev,bridge,privacy]"
	@touch $@

$(FLOWER_STAMP): pyproject.toml benchmarks/flower.lock
	@test -x $(FLOWER_VENV)/bin/python || $(PYTHON) -m venv $(FLOWER_VENV)
	$(FLOWER_VENV)/bin/pip install --quiet --disable-pip-version-check -c benchmarks/flower.lock -e ".[flower]"
	@touch $@

$(TEST_STAMP): $(STAMP) $(FLOWER_STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements.lock -e ".[$(TEST_EXTRAS)]"
	@touch $@

demo: $(STAMP)
	$(VENV)/bin/fitfed demo

test: lint $(TEST_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check custom jobs tests databricks_bridge benchmarks attack_harness
	$(VENV)/bin/ruff format --check --quiet custom jobs tests databricks_bridge benchmarks attack_harness

# `make bench` runs every benchmark (about 70 minutes on 2 cores); `make bench NAME=heart_disease` runs one.
bench: $(STAMP) $(FLOWER_STAMP)
	$(VENV)/bin/fitfed bench $(NAME)

jobs: $(STAMP)
	$(VENV)/bin/fitfed jobs export

clean:
	rm -rf $(VENV) $(FLOWER_VENV) .pytest_cache build *.egg-info
