# Newcomer commands: `make run` (set up + main job on the embedded default), `make test` (set up + every test).
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= mlproject/configs/default.yaml
EXPERIMENT ?= revelio
SET ?=
PYTEST_ARGS ?=

.PHONY: install run test test-fast services-deps bench clean

# The service's own dependencies: all `make run` needs.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade pip
	# setuptools warns on every editable install that a folder named like the package could shadow it;
	# ours is the package itself, so the warning is noise
	PYTHONWARNINGS=ignore::UserWarning $(PY) -m pip install -qq -e .
	touch $@

# The test tools on top (pytest, moto, Playwright, and SAELens and sparsify to load exported SAEs in).
$(VENV)/.installed-test: $(VENV)/.installed
	PYTHONWARNINGS=ignore::UserWarning $(PY) -m pip install -qq -e ".[test]"
	touch $@

install: $(VENV)/.installed-test

# The whole chain (extract → SAE → probe → registry) as an MLflow project, in this environment.
run: $(VENV)/.installed
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/mlflow run . --env-manager local --experiment-name $(EXPERIMENT) \
		-P config=$(CONFIG) -P overrides="$(SET)"

# System packages for the service-backed and browser tests (PostgreSQL, Chromium); needs root or sudo.
services-deps:
	bash scripts/install-system-deps.sh

# Every test: fast suite, service-backed scale-out tests (PostgreSQL + S3 + MLflow server) and the browser test.
test: $(VENV)/.installed-test services-deps
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

# Without services, browser and the full-size model runs: what a developer runs while editing.
test-fast: $(VENV)/.installed-test
	$(VENV)/bin/pytest -q -m "not services and not browser and not fullsize" $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/bench_extract.py
	$(PY) benchmarks/bench_sae.py

clean:
	rm -rf $(VENV) outputs mlruns mlflow.db optuna.db
