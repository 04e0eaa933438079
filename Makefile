# Newcomer commands: `make run` (set up + main job on the embedded default), `make test` (set up + every test).
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= mlproject/configs/default.yaml
EXPERIMENT ?= revelio
SET ?=
PYTEST_ARGS ?=

.PHONY: install run test test-fast services-deps bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# setuptools warns on every editable install that a folder named like the package could shadow it;
	# ours is the package itself, so the warning is noise
	PYTHONWARNINGS=ignore::UserWarning $(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

# The whole chain (extract → SAE → probe → registry) as an MLflow project, in this environment.
run: install
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/mlflow run . --env-manager local --experiment-name $(EXPERIMENT) \
		-P config=$(CONFIG) -P overrides="$(SET)"

# System packages for the service-backed and browser tests (PostgreSQL, Chromium); needs root or sudo.
services-deps:
	bash scripts/install-system-deps.sh

# Every test: fast suite, service-backed scale-out tests (PostgreSQL + S3 + MLflow server) and the browser test.
test: install services-deps
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

# Without services, browser and the full-size model runs: what a developer runs while editing.
test-fast: install
	$(VENV)/bin/pytest -q -m "not services and not browser and not fullsize" $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/bench_extract.py
	$(PY) benchmarks/bench_sae.py

clean:
	rm -rf $(VENV) outputs mlruns mlflow.db optuna.db
